"""Production entry point: `gunicorn web.wsgi:app` (settings from the environment)."""

from web import create_app

app = create_app()
