"""One model, several studies in flight: the forward pass shared by a worker's task threads.

With `xray worker --pool threads --concurrency K` one process holds one model and runs K studies at
once. Decoding, CAMs, heatmap writes and SQL of some studies then overlap the forward pass of
another; the forward passes themselves must not overlap beyond what the predictor runs at once (its
`streams`: 1 for TensorFlow and by default, where each pass uses all of the process's inference
threads; OpenVINO with XRAY_WORKER_STREAMS=N runs N passes on N infer requests, each with its share
of the threads).

`ForwardGate` wraps a `shared.runtime.Predictor` and lets `predictor.streams` forward passes run at
a time, first come first served. With `max_batch` > 1 it also micro-batches: the requests that
arrived while every stream was busy go together into the next pass, up to `max_batch` images (a deep queue keeps K
threads busy, so up to K - 1 wait at the gate at once). Everything else is the wrapped predictor's.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Request:
    batch: np.ndarray
    done: bool = False
    result: tuple[np.ndarray, np.ndarray] | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class ForwardGate:
    """A thread-safe `predict` over one predictor: `streams` passes at a time, waiting requests joined."""

    def __init__(self, predictor: Any, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.slots = max(1, int(getattr(predictor, "streams", 1)))  # passes that may run at once
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        self._running = 0
        self.passes = 0  # forward passes run (for the benchmark and tests)
        self.images = 0  # images through them

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found on the gate: the predictor's card, labels, thresholds,
        # dense kernel, preprocess, ... (read-only things, safe from any thread).
        try:
            predictor = self.__dict__["predictor"]
        except KeyError:  # not initialised yet (copy, pickle): behave like a missing attribute
            raise AttributeError(name) from None
        return getattr(predictor, name)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = _Request(batch)
        with self._lock:
            self._pending.append(request)
        while not request.done:
            group = self._take_turn()
            if group is None:
                request.ready.wait()  # woken when our pass ends or when the gate is free again
                request.ready.clear()
                continue
            self._run(group)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _take_turn(self) -> list[_Request] | None:
        """The next pass's requests (oldest first) if a stream is free, else None."""
        with self._lock:
            if self._running >= self.slots or not self._pending:
                return None
            group = [self._pending.popleft()]
            images = len(group[0].batch)
            while self._pending and images + len(self._pending[0].batch) <= self.max_batch:
                images += len(self._pending[0].batch)
                group.append(self._pending.popleft())
            self._running += 1
            return group

    def _run(self, group: list[_Request]) -> None:
        try:
            batch = group[0].batch if len(group) == 1 else np.concatenate([r.batch for r in group])
            probabilities, features = self.predictor.predict(batch)
            start = 0
            for request in group:
                end = start + len(request.batch)
                request.result = (probabilities[start:end], features[start:end])
                start = end
        except BaseException as exc:  # every waiter gets the error, not only the one that ran it
            for request in group:
                request.error = exc
        finally:
            with self._lock:
                self._running -= 1
                self.passes += 1
                self.images += sum(len(r.batch) for r in group)
                for request in group:
                    request.done = True
                waiting = list(self._pending)
            for request in group:
                request.ready.set()
            if waiting:
                waiting[0].ready.set()  # the oldest waiter runs the next pass on the freed stream
