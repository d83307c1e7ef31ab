"""`xray user`: accounts on the configured database (DATABASE_URL, or the embedded default's SQLite).

  xray user add NAME --role admin|radiologist|uploader [--password-stdin]   (the first admin, too)
  xray user token NAME [--label L]     prints a new API token once (only its sha256 is stored)
  xray user list
  xray user passwd NAME [--password-stdin]
  xray user disable NAME | enable NAME
  xray user revoke NAME                revokes every API token and page session of NAME

The database schema is brought up to date first (as `xray db upgrade` would), so the first admin can
be created before the service has ever started.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from sqlalchemy.orm import Session


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("user", help="accounts: add users, API tokens, list, disable",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = commands.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, help="admin, radiologist or uploader")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--no-password", action="store_true", help="an API-only account (it cannot log in to pages)")
    add.set_defaults(func=_add)
    token = commands.add_parser("token", help="make a new API token for a user and print it (once)")
    token.add_argument("name")
    token.add_argument("--label", help="what the token is for, e.g. 'ward 4 PACS bridge'")
    token.set_defaults(func=_token)
    commands.add_parser("list", help="list users").set_defaults(func=_list)
    passwd = commands.add_parser("passwd", help="set a user's password (ends their page sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(func=_passwd)
    for action, help_text in (("disable", "stop a user: ends their sessions and revokes their tokens for good"),
                              ("enable", "let a disabled user in again"),
                              ("revoke", "revoke every API token and end every page session of a user")):
        sub = commands.add_parser(action, help=help_text)
        sub.add_argument("name")
        sub.set_defaults(func=_simple(action))


def _session() -> Session:
    from migrations import upgrade
    from shared.config import load_settings
    from shared.db import make_engine, make_session_factory

    settings = load_settings()
    upgrade(settings.database_url)
    return make_session_factory(make_engine(settings.database_url))()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise SystemExit("xray user: no terminal to ask for the password; pass --password-stdin and pipe it in")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("xray user: the passwords differ; nothing was changed")
    return first


def _fail(message: str) -> int:
    print(f"xray user: {message}", file=sys.stderr)
    return 1


def _add(args: argparse.Namespace) -> int:
    from shared.accounts import AccountError, create_user, parse_role

    try:
        role = parse_role(args.role)
        password = None if args.no_password else _read_password(args.password_stdin)
        with _session() as session:
            user = create_user(session, args.name, role, password)
            session.commit()
    except AccountError as exc:
        return _fail(str(exc))
    print(f"user {user.username!r} added with role {user.role}"
          + ("" if password else " (API tokens only: create one with `xray user token`)"))
    return 0


def _token(args: argparse.Namespace) -> int:
    from shared.accounts import find_user, issue_token

    with _session() as session:
        user = find_user(session, args.name)
        if user is None:
            return _fail(f"no user named {args.name!r}")
        if not user.active:
            return _fail(f"user {args.name!r} is disabled")
        token = issue_token(session, user, args.label)
        session.commit()
    print(token)
    print("This token is shown once: keep it secret. Send it as 'Authorization: Bearer <token>' "
          "(xray submit --token ...).", file=sys.stderr)
    return 0


def _list(_args: argparse.Namespace) -> int:
    from shared.accounts import user_summaries

    with _session() as session:
        summaries = user_summaries(session)
        if not summaries:
            print("no users yet: create the first admin with `xray user add NAME --role admin`")
            return 0
        print(f"{'username':<24} {'role':<12} {'active':<7} {'tokens':<7} last login")
        for summary in summaries:
            user = summary.user
            last = user.last_login_at.strftime("%Y-%m-%d %H:%M") if user.last_login_at else "never"
            print(f"{user.username:<24} {user.role:<12} {'yes' if user.active else 'no':<7} "
                  f"{len(summary.tokens):<7} {last}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from shared.accounts import AccountError, find_user, set_password

    with _session() as session:
        user = find_user(session, args.name)
        if user is None:
            return _fail(f"no user named {args.name!r}")
        try:
            set_password(session, user, _read_password(args.password_stdin))
        except AccountError as exc:
            return _fail(str(exc))
        session.commit()
    print(f"password of {args.name!r} changed; their existing page sessions have ended")
    return 0


def _simple(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from shared.accounts import disable_user, enable_user, find_user, revoke_access

        with _session() as session:
            user = find_user(session, args.name)
            if user is None:
                return _fail(f"no user named {args.name!r}")
            if action == "revoke":
                tokens, sessions = revoke_access(session, user)
                message = f"{tokens} token(s) of {args.name!r} revoked, {sessions} page session(s) ended"
            elif action == "disable":
                disable_user(session, user)
                message = (f"user {args.name!r} disabled: every page session ended and every API token revoked "
                           "(enabling the user later brings none of them back)")
            else:
                enable_user(user)
                message = f"user {args.name!r} enabled: they can log in again; make new API tokens if needed"
            session.commit()
        print(message)
        return 0

    return run
