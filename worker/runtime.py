"""What one worker process holds: the model, a database engine, storage and its heartbeat.

Created by `start_runtime` in `worker_process_init` (each prefork child, after the fork) or in
`worker_init` for pools that run tasks in the main process (solo, threads). TensorFlow is imported
here, inside `start_runtime`, never at module import: a model loaded before a fork hangs the child.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.storage import Storage
from worker.allocator import keep_freed_memory
from worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    storage: Storage
    diagnoser: object  # shared.diagnosis.Diagnoser (typed loosely: importing it imports TensorFlow)
    model_version: str
    model_trained: bool
    heartbeat: Heartbeat | None

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.engine.dispose()


_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def load_diagnoser(settings: Settings, processes: int = 1) -> object:
    """Load the bundle at settings.model_dir with settings.inference_runtime/inference_precision
    (shared.runtime; `processes` model processes share this machine's CPUs) and run its forward
    pass once (so the first study is not slower than the rest).

    The predictor is always behind a `ForwardGate` (max batch `settings.worker_batch_size`): with
    the threads pool, K task threads share this one model and their forward passes must not overlap;
    with one thread (prefork child, solo) the gate is an uncontended lock. For the threads pool
    `processes` is 1: its one model gets all of the machine's inference threads, split into
    `settings.worker_streams` OpenVINO streams (the gate lets that many passes overlap)."""
    import numpy as np

    from shared.diagnosis import Diagnoser
    from shared.runtime import load_predictor
    from worker.forward_gate import ForwardGate

    start = time.perf_counter()
    classifier = load_predictor(settings.model_dir, settings.inference_runtime, settings.inference_precision,
                                processes=processes, streams=settings.worker_streams)
    size = classifier.input_size
    classifier.predict(np.zeros((1, size, size, 3), dtype=np.float32))
    log.info("model %s (%s, input %d, %s) loaded from %s in %.1f s", classifier.version,
             "trained" if classifier.trained else "UNTRAINED", size, classifier.runtime_name, settings.model_dir,
             time.perf_counter() - start)
    gate: Any = ForwardGate(classifier, settings.worker_batch_size)  # a Predictor by delegation
    return Diagnoser(gate)


def start_runtime(settings: Settings, redis_url: str | None, processes: int = 1) -> WorkerRuntime:
    """Load everything this process needs (once); start its heartbeat when a Redis URL is given.
    `processes`: how many model-holding processes this worker runs (its pool size)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        keep_freed_memory()  # before the model: its buffers come from the tuned heap too
        diagnoser = load_diagnoser(settings, processes)
        classifier = diagnoser.classifier  # type: ignore[attr-defined]
        engine = make_engine(settings.database_url)
        heartbeat = None
        if redis_url:
            heartbeat = Heartbeat(settings, redis_url, classifier.version, classifier.trained)
            heartbeat.start()
        _runtime = WorkerRuntime(
            settings=settings,
            engine=engine,
            session_factory=make_session_factory(engine),
            storage=Storage(settings.storage_dir),
            diagnoser=diagnoser,
            model_version=classifier.version,
            model_trained=classifier.trained,
            heartbeat=heartbeat,
        )
        return _runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not started (no worker_process_init/worker_init ran)")
    return _runtime


def stop_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
