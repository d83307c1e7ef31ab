"""`xray dicom listen [--port P] [--host H]`: the DICOM receiver (gateway.receiver) on REDIS_URL and
DATABASE_URL, storing into STORAGE_DIR, with XRAY_DICOM_AET / XRAY_DICOM_PORT / XRAY_DICOM_ALLOWED_AETS."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dicom", help="DICOM networking: the receiver for PACS and modalities")
    commands = parser.add_subparsers(dest="dicom_command", metavar="COMMAND", required=True)
    listen = commands.add_parser("listen", help="receive chest X-rays by C-STORE and queue them like uploads")
    listen.add_argument("--port", type=int, help="port (default XRAY_DICOM_PORT, 11112)")
    listen.add_argument("--host", help="address to listen on (default XRAY_DICOM_HOST, 0.0.0.0)")
    listen.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.worker import services_problem
    from gateway.receiver import serve
    from shared.config import load_settings
    from shared.db import make_engine, make_session_factory
    from shared.logs import configure_logging
    from shared.queue import enqueue_diagnosis, make_celery
    from shared.storage import make_storage

    configure_logging()
    settings = load_settings()
    changes = {k: v for k, v in (("dicom_port", args.port), ("dicom_host", args.host)) if v is not None}
    settings = settings.with_overrides(**changes)
    problem = services_problem(settings)
    if problem:
        print(f"xray dicom listen: {problem}", file=sys.stderr)
        return 2
    celery = make_celery(settings, settings.redis_url)
    engine = make_engine(settings.database_url)
    print(f"xray dicom listen: AE {settings.dicom_aet} on {settings.dicom_host}:{settings.dicom_port}, "
          f"calling AEs allowed: {', '.join(settings.dicom_allowed_aets) or 'none'}", flush=True)
    try:
        serve(settings, make_session_factory(engine), make_storage(settings),
              lambda study_id: enqueue_diagnosis(celery, study_id))
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
    return 0
