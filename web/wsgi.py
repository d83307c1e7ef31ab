"""Production entry point: `gunicorn web.wsgi:app` (settings from the environment; logging as
XRAY_LOG_FORMAT says, shared.logs)."""

from shared.logs import configure_logging
from web import create_app

configure_logging()
app = create_app()
