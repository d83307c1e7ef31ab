"""`xray db upgrade` (migrate the configured database to the newest schema) and `xray db current`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("db", help="database schema (Alembic migrations)")
    commands = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = commands.add_parser("upgrade", help="migrate the database (DATABASE_URL) to the newest schema")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(func=_upgrade)
    cur = commands.add_parser("current", help="show the database's schema revision and the newest one")
    cur.set_defaults(func=_current)


def _upgrade(args: argparse.Namespace) -> int:
    from migrations import current, upgrade
    from shared.config import load_settings

    settings = load_settings()
    try:
        upgrade(settings.database_url, args.revision)
    except Exception as exc:  # noqa: BLE001 - shown to the operator, with the database named
        print(f"xray db upgrade: could not migrate {_safe(settings.database_url)}: {exc}", file=sys.stderr)
        return 1
    print(f"database {_safe(settings.database_url)} is at revision {current(settings.database_url)}")
    return 0


def _current(_args: argparse.Namespace) -> int:
    from migrations import current, head
    from shared.config import load_settings

    settings = load_settings()
    try:
        revision = current(settings.database_url)
    except Exception as exc:  # noqa: BLE001
        print(f"xray db current: cannot read {_safe(settings.database_url)}: {exc}", file=sys.stderr)
        return 1
    newest = head()
    print(f"database: {_safe(settings.database_url)}")
    print(f"current:  {revision or '(empty: run `xray db upgrade`)'}")
    print(f"head:     {newest}")
    return 0 if revision == newest else 3


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparsable DATABASE_URL)"
