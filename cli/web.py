"""`xray web`: the web app on Flask's development server. Production: `gunicorn web.wsgi:app`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "web", help="run the web app with Flask's development server (production: gunicorn web.wsgi:app)"
    )
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--debug", action="store_true", help="Flask debug mode (reloader, tracebacks)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from shared.logs import configure_logging
    from web import create_app

    configure_logging()
    try:
        app = create_app()
    except RuntimeError as exc:
        print(f"xray web: {exc}", file=sys.stderr)
        return 2
    print(f"xray web: development server on http://{args.host}:{args.port}/ "
          "(use `gunicorn web.wsgi:app` in production)", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True)
    return 0
