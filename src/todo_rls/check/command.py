"""`todo-rls check`: audit a live database for row-level-security holes, read-only."""

import argparse
import os

from todo_rls.check.context import Conn
from todo_rls.check.database_audit import (
    DEFAULT_ALLOW,
    DEFAULT_APP_ROLE,
    DEFAULT_SCHEMA,
    audit,
    connect,
)
from todo_rls.check.report import as_json, as_text


def run(args: argparse.Namespace) -> int:
    """The `todo-rls check` command: 0 when clean, 1 with findings (errors go to cli.main)."""
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    with connect(url) as conn:
        code, report = audit_with(conn, args)
    print(report)
    return code


def audit_with(conn: Conn, args: argparse.Namespace) -> tuple[int, str]:
    """Exit code and report of `todo-rls check` as args (parsed by the CLI) ask, over conn
    instead of --url: the tests audit a transaction they roll back, as whoever conn is."""
    allow = (*DEFAULT_ALLOW, *(args.allow or ()))
    ctx, findings = audit(conn, args.schema, args.app_role, allow, args.login_role)
    database = conn.info.dbname
    report = as_json(database, ctx, findings) if args.json else as_text(database, ctx, findings)
    return (1 if findings else 0), report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `todo-rls check`."""
    parser.add_argument("--url", help="database URL (default: $DATABASE_URL), any role")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help="default: public")
    parser.add_argument(
        "--app-role",
        default=DEFAULT_APP_ROLE,
        help=f"the role the policies are for (default: {DEFAULT_APP_ROLE})",
    )
    parser.add_argument(
        "--allow",
        action="append",
        metavar="TABLE",
        help="a table or view of the app schema that needs no RLS (repeatable; adds to "
        f"{', '.join(DEFAULT_ALLOW)}); a table with a user_id column is always checked",
    )
    parser.add_argument(
        "--login-role",
        action="append",
        metavar="ROLE",
        help="a role the app logs in as (repeatable; default: every LOGIN member of the app "
        "role), checked like the app role",
    )
