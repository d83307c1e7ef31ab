"""The Celery worker: diagnoses queued studies (see worker/processing.py for the core, without Celery)."""
