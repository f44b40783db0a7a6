"""`todo-rls keys generate | add | list | retire`: the signing keys of a database, as its owner."""

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta

import psycopg

from todo_rls import keys
from todo_rls.engine import database_url
from todo_rls.errors import DatabaseUrlError
from todo_rls.identity import KEY_ENV, SigningKey, generate_key_hex

URL_ENVS = ("DATABASE_URL_DIRECT", "DATABASE_URL")
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 0s, 10m, 2h or 1d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of `todo-rls keys`."""
    actions = parser.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    actions.add_parser("generate", help="print a new random key (64 hex digits) for " + KEY_ENV)
    url_help = (
        "the database as its owner, the role that applied the migrations (default: "
        "$DATABASE_URL_DIRECT, then $DATABASE_URL)"
    )
    add = actions.add_parser("add", help=f"install the key in ${KEY_ENV} (idempotent)")
    add.add_argument("--url", help=url_help)
    listing = actions.add_parser("list", help="the installed keys: id, created, retirement")
    listing.add_argument("--url", help=url_help)
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    retire = actions.add_parser(
        "retire", help="stop accepting a key (after an overlap), once its successor is deployed"
    )
    retire.add_argument("key_id", help="the key's id, as `todo-rls keys list` shows it")
    retire.add_argument(
        "--in",
        dest="after",
        type=_duration,
        default=timedelta(0),
        help="keep accepting it this long, e.g. 10m (default: 0s, at once)",
    )
    retire.add_argument("--url", help=url_help)


def _connect(url: str | None) -> psycopg.Connection[tuple[object, ...]]:
    given = url or next((os.environ[name] for name in URL_ENVS if os.environ.get(name)), None)
    if not given:
        raise DatabaseUrlError(
            "no database URL: pass --url OWNER_URL or export DATABASE_URL_DIRECT (the owner's, "
            "for Neon the direct, non-pooled one)"
        )
    target = database_url(given).set(drivername="postgresql")
    return psycopg.connect(target.render_as_string(hide_password=False), autocommit=True)


def run(args: argparse.Namespace) -> int:
    """Run one `todo-rls keys` action; 0 on success (errors raise, the CLI reports them)."""
    if args.keys_action == "generate":
        key_hex = generate_key_hex()
        print(key_hex)
        key_id = SigningKey.from_hex(key_hex).key_id
        print(f"todo-rls: key {key_id}; give it to the app as {KEY_ENV}", file=sys.stderr)
        return 0
    with _connect(args.url) as conn:
        if args.keys_action == "add":
            key = SigningKey.from_env()
            added = keys.add(conn, key)
            state = "installed" if added else "was already installed"
            print(f"todo-rls: key {key.key_id} {state}")
        elif args.keys_action == "list":
            _print_keys(keys.installed(conn), args.json)
        else:
            at = keys.retire(conn, args.key_id, args.after)
            print(f"todo-rls: key {args.key_id} is refused from {at.isoformat()}")
    return 0


def _print_keys(installed: list[keys.InstalledKey], as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        rows = [
            {
                "key_id": key.key_id,
                "created_at": key.created_at.isoformat(),
                "retire_at": key.retire_at.isoformat() if key.retire_at else None,
                "status": key.status(now),
            }
            for key in installed
        ]
        print(json.dumps({"keys": rows}, indent=2))
        return
    if not installed:
        print(f"no keys installed: {KEY_ENV}=<key> todo-rls keys add")
        return
    print(f"{'key id':<16}  {'status':<8}  {'created':<25}  retire at")
    for key in installed:
        retire = key.retire_at.isoformat(timespec="seconds") if key.retire_at else "-"
        created = key.created_at.isoformat(timespec="seconds")
        print(f"{key.key_id:<16}  {key.status(now):<8}  {created:<25}  {retire}")
