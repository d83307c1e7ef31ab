"""worker/forward_gate.py: one forward pass at a time over a shared predictor, waiting requests joined
into micro-batches, each caller's rows routed back to it, errors to every caller of a failed pass.

The predictor here is a small stand-in (the gate is under test, not the model): `predict` records
each pass's batch size and how many passes ran at once, sleeps a little, and answers rows computed
from its input (each image is filled with one value; its probabilities and features carry it back),
so a caller that got someone else's rows would see the wrong value."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shared.diagnosis import Diagnoser, Diagnosis
from shared.findings import FINDINGS
from shared.images import ImageLimits, read_image_file
from worker.forward_gate import ForwardGate

SIDE = 4
CHANNELS = 3  # feature channels of the stand-in (ResNet50 has 2048)
WAIT_S = 10.0


class FakePredictor:
    """The attributes `shared.diagnosis.Diagnoser` reads, and a `predict` that watches for overlap."""

    version = "fake-1"
    trained = False
    input_size = SIDE
    runtime_name = "fake"
    labels = tuple(FINDINGS)

    def __init__(self, delay_s: float = 0.002) -> None:
        self.delay_s = delay_s
        self.thresholds = np.full(len(FINDINGS), 0.5, dtype=np.float32)
        self.dense_kernel = np.ones((CHANNELS, len(FINDINGS)), dtype=np.float32)
        self.dense_bias = np.zeros(len(FINDINGS), dtype=np.float32)
        self.batch_sizes: list[int] = []
        self.active = 0
        self.max_active = 0
        self.fail_next: BaseException | None = None
        self.hold: threading.Event | None = None  # when set: the next pass waits for it
        self.entered = threading.Event()  # set when a pass has started
        self._lock = threading.Lock()

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:  # uint8 levels or float [0, 1], as preprocess takes
        grey = pixels / np.float32(255.0) if pixels.dtype == np.uint8 else pixels
        return np.full((SIDE, SIDE, 3), float(grey.mean()), dtype=np.float32)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.batch_sizes.append(len(batch))
            hold, self.hold = self.hold, None
            error, self.fail_next = self.fail_next, None
        self.entered.set()
        try:
            if hold is not None:
                assert hold.wait(WAIT_S), "the test never released the held pass"
            time.sleep(self.delay_s)
            if error is not None:
                raise error
            values = batch[:, 0, 0, 0].astype(np.float32)  # one value per image
            probabilities = np.repeat(values[:, None], len(FINDINGS), axis=1)
            features = np.broadcast_to(values[:, None, None, None], (len(batch), 2, 2, CHANNELS)).copy()
            return probabilities, features
        finally:
            with self._lock:
                self.active -= 1


def image_batch(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, SIDE, SIDE, 3), value, dtype=np.float32)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class Caller(threading.Thread):
    """One thread calling gate.predict once; keeps what it got (rows or the error)."""

    def __init__(self, gate: ForwardGate, batch: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.gate = gate
        self.batch = batch
        self.result: tuple[np.ndarray, np.ndarray] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.gate.predict(self.batch)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def finish(self) -> Caller:
        self.join(WAIT_S)
        assert not self.is_alive(), "a caller is still waiting at the gate"
        return self


def hold_gate(gate: ForwardGate, predictor: FakePredictor) -> tuple[Caller, threading.Event]:
    """Start a pass that stays inside `predict` until the returned event is set."""
    release = threading.Event()
    predictor.hold = release
    predictor.entered.clear()
    holder = Caller(gate, image_batch(-1.0))
    holder.start()
    assert predictor.entered.wait(WAIT_S)
    return holder, release


def queue_callers(gate: ForwardGate, batches: list[np.ndarray]) -> list[Caller]:
    """Start one caller per batch, in this order: each is waiting at the gate before the next starts."""
    callers = []
    for batch in batches:
        before = len(gate._pending)
        caller = Caller(gate, batch)
        caller.start()
        wait_for(lambda before=before: len(gate._pending) == before + 1, "a caller to queue at the gate")
        callers.append(caller)
    return callers


def assert_own_rows(caller: Caller) -> None:
    assert caller.error is None, caller.error
    assert caller.result is not None
    probabilities, features = caller.result
    sent = caller.batch[:, 0, 0, 0]
    assert probabilities.shape == (len(caller.batch), len(FINDINGS))
    assert features.shape == (len(caller.batch), 2, 2, CHANNELS)
    np.testing.assert_array_equal(probabilities[:, 0], sent)
    np.testing.assert_array_equal(features[:, 0, 0, 0], sent)


@pytest.mark.parametrize(("max_batch", "streams"), [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_passes_never_overlap_beyond_streams_and_every_caller_gets_its_own_rows(max_batch: int, streams: int) -> None:
    predictor = FakePredictor(delay_s=0.001)
    predictor.streams = streams  # type: ignore[attr-defined]
    gate = ForwardGate(predictor, max_batch=max_batch)
    threads, calls = 8, 15
    results: dict[float, np.ndarray] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        rng = random.Random(index)
        try:
            for call in range(calls):
                value = float(index * 1000 + call)  # distinct per call
                probabilities, features = gate.predict(image_batch(value))
                assert probabilities.shape == (1, len(FINDINGS)) and features.shape == (1, 2, 2, CHANNELS)
                with lock:
                    results[value] = probabilities[0]
                time.sleep(rng.random() * 0.002)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S * 3)
    assert not errors, errors
    assert predictor.max_active <= streams  # never more predicts at once than the predictor has streams
    assert len(results) == threads * calls
    for value, row in results.items():
        np.testing.assert_array_equal(row, np.full(len(FINDINGS), value, dtype=np.float32))
    assert max(predictor.batch_sizes) <= max_batch
    assert sum(predictor.batch_sizes) == threads * calls == gate.images
    assert gate.passes == len(predictor.batch_sizes)


def test_waiting_requests_are_joined_up_to_max_batch_and_never_beyond() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor, max_batch=4)
    holder, release = hold_gate(gate, predictor)
    waiters = queue_callers(gate, [image_batch(float(v)) for v in range(1, 7)])  # six single images
    release.set()
    for caller in [holder.finish(), *(w.finish() for w in waiters)]:
        assert_own_rows(caller)
    # the held pass, then the six waiters oldest first: four together, then the last two
    assert predictor.batch_sizes == [1, 4, 2]
    assert predictor.max_active == 1


def test_joining_is_first_come_first_served_and_respects_the_image_count() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor, max_batch=4)
    holder, release = hold_gate(gate, predictor)
    # 3 images, then 2 (3 + 2 > 4: not joined, and the 1 behind it does not jump the queue), then 1
    waiters = queue_callers(gate, [image_batch(10.0, 3), image_batch(20.0, 2), image_batch(30.0, 1)])
    release.set()
    for caller in [holder.finish(), *(w.finish() for w in waiters)]:
        assert_own_rows(caller)
    assert predictor.batch_sizes == [1, 3, 3]


def test_a_request_larger_than_max_batch_runs_alone_and_whole() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor, max_batch=2)
    holder, release = hold_gate(gate, predictor)
    waiters = queue_callers(gate, [image_batch(5.0, 3), image_batch(6.0, 1)])
    release.set()
    for caller in [holder.finish(), *(w.finish() for w in waiters)]:
        assert_own_rows(caller)
    assert predictor.batch_sizes == [1, 3, 1]


def test_max_batch_one_never_joins() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor, max_batch=1)
    holder, release = hold_gate(gate, predictor)
    waiters = queue_callers(gate, [image_batch(float(v)) for v in range(1, 4)])
    release.set()
    for caller in [holder.finish(), *(w.finish() for w in waiters)]:
        assert_own_rows(caller)
    assert predictor.batch_sizes == [1, 1, 1, 1]


def test_an_error_in_predict_reaches_every_caller_of_that_pass_and_the_gate_keeps_working() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor, max_batch=4)
    holder, release = hold_gate(gate, predictor)
    waiters = queue_callers(gate, [image_batch(1.0), image_batch(2.0), image_batch(3.0)])
    predictor.fail_next = RuntimeError("the runtime fell over")  # the joined pass of the three
    release.set()
    assert_own_rows(holder.finish())
    for waiter in waiters:
        waiter.finish()
        assert isinstance(waiter.error, RuntimeError) and "fell over" in str(waiter.error)
        assert waiter.result is None
    assert predictor.batch_sizes == [1, 3]

    # afterwards: the gate is free again and serves callers alone and joined
    probabilities, _ = gate.predict(image_batch(7.0))
    assert probabilities[0, 0] == 7.0
    holder, release = hold_gate(gate, predictor)
    waiters = queue_callers(gate, [image_batch(8.0), image_batch(9.0)])
    release.set()
    for caller in [holder.finish(), *(w.finish() for w in waiters)]:
        assert_own_rows(caller)
    assert predictor.batch_sizes == [1, 3, 1, 1, 2]
    assert predictor.max_active == 1


def test_an_error_with_nobody_waiting_leaves_the_gate_usable() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor)
    predictor.fail_next = ValueError("bad input")
    with pytest.raises(ValueError, match="bad input"):
        gate.predict(image_batch(1.0))
    assert gate.predict(image_batch(2.0))[0][0, 0] == 2.0


def test_a_second_stream_runs_while_the_first_is_held_and_a_third_caller_waits() -> None:
    predictor = FakePredictor()
    predictor.streams = 2  # type: ignore[attr-defined]
    gate = ForwardGate(predictor)
    assert gate.slots == 2
    holder, release = hold_gate(gate, predictor)
    second_release = threading.Event()
    predictor.hold = second_release
    predictor.entered.clear()
    second = Caller(gate, image_batch(2.0))
    second.start()
    assert predictor.entered.wait(WAIT_S)  # entered predict beside the held pass
    assert predictor.active == 2
    third = queue_callers(gate, [image_batch(3.0)])[0]  # both streams busy: it waits at the gate
    assert predictor.active == 2 and len(gate._pending) == 1
    second_release.set()
    assert_own_rows(second.finish())
    assert_own_rows(third.finish())  # took the stream the second one freed
    release.set()
    holder.finish()
    assert predictor.max_active == 2 and gate.passes == 3


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ForwardGate(FakePredictor(), max_batch=0)


def test_attributes_are_the_predictors() -> None:
    predictor = FakePredictor()
    gate = ForwardGate(predictor, max_batch=2)
    assert gate.version == "fake-1" and gate.trained is False and gate.runtime_name == "fake"
    assert gate.input_size == SIDE and gate.labels == tuple(FINDINGS)
    assert gate.thresholds is predictor.thresholds and gate.dense_kernel is predictor.dense_kernel
    assert gate.dense_bias is predictor.dense_bias
    assert gate.preprocess == predictor.preprocess
    assert gate.max_batch == 2 and gate.predictor is predictor  # the gate's own, not delegated
    with pytest.raises(AttributeError):
        _ = gate.no_such_attribute


def test_a_diagnoser_over_the_gate_diagnoses_real_images_from_several_threads(nih_full_images: list[Path]) -> None:
    """What the worker builds (Diagnoser(ForwardGate(predictor))), driven as the threads pool does."""
    images = [read_image_file(path, ImageLimits()) for path in nih_full_images[:6]]
    predictor = FakePredictor(delay_s=0.005)
    diagnoser = Diagnoser(ForwardGate(predictor, max_batch=3))  # type: ignore[arg-type]
    diagnoses: dict[int, Diagnosis] = {}

    def run(index: int) -> None:
        diagnoses[index] = diagnoser.diagnose(images[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert predictor.max_active == 1
    assert sorted(diagnoses) == list(range(len(images)))
    for index, image in enumerate(images):
        diagnosis = diagnoses[index]
        assert diagnosis.model_version == "fake-1"
        assert [f.label for f in diagnosis.findings] == list(FINDINGS)
        # the stand-in answers each image's mean pixel as every probability: its own, not a neighbour's
        expected = np.float32(image.pixels.mean())
        assert all(f.probability == pytest.approx(float(expected), abs=1e-6) for f in diagnosis.findings)
