"""What one worker process holds: the model, a database engine, storage and its heartbeat.

`start_runtime` runs in `worker_process_init`, in each prefork child after the fork: TensorFlow and
OpenVINO are imported there, never at module import, because a model loaded before a fork hangs
the child.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.storage import Storage, make_storage
from worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    storage: Storage
    diagnoser: object  # shared.diagnosis.Diagnoser (typed loosely: importing it imports TensorFlow)
    heartbeat: Heartbeat | None

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.engine.dispose()


_runtime: WorkerRuntime | None = None


def load_diagnoser(settings: Settings, processes: int = 1) -> object:
    """The bundle at settings.model_dir on the configured runtime (`processes` model processes share
    this machine's CPUs), with one forward pass run so the first study is not slower than the rest."""
    import numpy as np

    from shared.diagnosis import Diagnoser
    from shared.frontal import FrontalReference
    from shared.runtime import load_predictor

    start = time.perf_counter()
    predictor = load_predictor(settings.model_dir, settings.inference_runtime, settings.inference_precision,
                               processes=processes)
    size = predictor.input_size
    predictor.predict(np.zeros((1, size, size, 3), dtype=np.float32))
    log.info("model %s (%s, input %d) on %s loaded from %s in %.1f s", predictor.version,
             "trained" if predictor.trained else "UNTRAINED", size, predictor.runtime_name, settings.model_dir,
             time.perf_counter() - start)
    return Diagnoser(predictor, FrontalReference.load(settings.model_dir, predictor.card.frontal))


def start_runtime(settings: Settings, redis_url: str | None, processes: int = 1) -> WorkerRuntime:
    """Load everything this process needs (once); start its heartbeat when a Redis URL is given."""
    global _runtime
    if _runtime is not None:
        return _runtime
    diagnoser = load_diagnoser(settings, processes)
    predictor = diagnoser.classifier  # type: ignore[attr-defined]
    engine = make_engine(settings.database_url)
    heartbeat = None
    if redis_url:
        heartbeat = Heartbeat(settings, redis_url, predictor.version, predictor.trained, predictor.runtime_name)
        heartbeat.start()
    _runtime = WorkerRuntime(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                             storage=make_storage(settings), diagnoser=diagnoser, heartbeat=heartbeat)
    return _runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not started (no worker_process_init ran)")
    return _runtime


def stop_runtime() -> None:
    global _runtime
    if _runtime is not None:
        _runtime.close()
        _runtime = None
