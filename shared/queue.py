"""The queue contract between web (producer) and worker (consumer): task names and Celery settings.

Importing this module never imports TensorFlow; the web enqueues by task name.
"""

from __future__ import annotations

from celery import Celery

from shared.config import Settings

TASK_DIAGNOSE = "worker.tasks.diagnose_study"
TASK_DELIVER = "worker.tasks.deliver_results"  # send a done study's SR and Secondary Capture by C-STORE


def celery_config(settings: Settings, broker_url: str) -> dict[str, object]:
    return {
        "broker_url": broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue_name,
        "task_routes": {TASK_DIAGNOSE: {"queue": settings.queue_name},
                        TASK_DELIVER: {"queue": settings.queue_name}},
        # Long, memory-heavy tasks: acknowledge only when done, requeue when a worker dies,
        # take one message at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        # Redis redelivers an unacknowledged message after the visibility timeout: keep it well
        # above the task time limit or long tasks run twice.
        "broker_transport_options": {"visibility_timeout": settings.task_time_limit_s * 3},
        "broker_connection_retry_on_startup": True,
        # Loading TensorFlow and the model takes a while: do not kill children while they load.
        "worker_proc_alive_timeout": 120,
        # KiB: recycle a pool process that leaks past the cap
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings, broker_url: str, name: str = "xray") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings, broker_url))
    return app


def enqueue_diagnosis(app: Celery, study_id: int) -> None:
    """Send one study to the workers. Call only after the study row is committed."""
    app.send_task(TASK_DIAGNOSE, args=[study_id])


def enqueue_delivery(app: Celery, study_id: int) -> None:
    """Send a done study's results to its pending DICOM destinations. Call after its rows are committed."""
    app.send_task(TASK_DELIVER, args=[study_id])


# Workers announce themselves in Redis so that /healthz can report the model version they serve.
HEARTBEAT_TTL_S = 60


def heartbeat_pattern(settings: Settings) -> str:
    return f"{settings.queue_name}:worker:*"


def heartbeat_key(settings: Settings, worker_name: str) -> str:
    """Redis key holding JSON {"model_version", "model_trained", "runtime", "pid", "at"}, TTL 60 s."""
    return f"{settings.queue_name}:worker:{worker_name}"
