"""`todo-rls check`: audit a live database for row-level-security holes, read-only."""

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from itertools import groupby
from typing import Any

import psycopg

from todo_rls.check_rules import RULES, Context, Finding, load_context, run_rules
from todo_rls.engine import database_url

DEFAULT_SCHEMA = "public"
DEFAULT_APP_ROLE = "todo_app"
# Better Auth's tables (no user_id; its server reads them as their owner) and Alembic's.
DEFAULT_ALLOW = ("user", "session", "account", "verification", "jwks", "alembic_version")
CONNECT_TIMEOUT = 10  # seconds: long enough for a suspended Neon compute to wake


def connect(url: str | None) -> psycopg.Connection[tuple[Any, ...]]:
    """A read-only connection to url (default: $DATABASE_URL); any role can run the checks."""
    parsed = database_url(url)  # DatabaseUrlError (exit 2) when missing or not PostgreSQL
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    # No prepared statements: the URL may be a transaction-mode pooler (Neon's -pooler host).
    conn = psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None)
    conn.read_only = True
    # Every query runs in this one transaction; a transaction-local search_path keeps a
    # look-alike function in another schema out of the checks and leaks into no pooled session.
    conn.execute("select pg_catalog.set_config('search_path', 'pg_catalog', true)")
    return conn


def audit(
    conn: psycopg.Connection[tuple[Any, ...]],
    schema: str = DEFAULT_SCHEMA,
    app_role: str = DEFAULT_APP_ROLE,
    allow: Sequence[str] = DEFAULT_ALLOW,
    login_roles: Sequence[str] | None = None,
) -> tuple[Context, list[Finding]]:
    """Run every rule against conn's database; the context says what was looked at."""
    roles = list(login_roles) if login_roles is not None else None
    ctx = load_context(conn, schema, app_role, list(allow), roles)
    return ctx, run_rules(ctx)


def summary(ctx: Context, findings: list[Finding]) -> dict[str, Any]:
    """Counts for the report's last line and the JSON's summary."""
    return {
        "findings": len(findings),
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
        "rules": len(RULES),
        "tables": [table.name for table in ctx.tables],
        "schema": ctx.schema,
        "app_role": ctx.app_role.name,
        "login_roles": [role.name for role in ctx.login_roles],
    }


def as_json(database: str, ctx: Context, findings: list[Finding]) -> str:
    """`{"database": ..., "findings": [...], "summary": {...}}` as one JSON object."""
    return json.dumps(
        {
            "database": database,
            "findings": [asdict(f) for f in findings],
            "summary": summary(ctx, findings),
        },
        indent=2,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def as_text(database: str, ctx: Context, findings: list[Finding]) -> str:
    """A readable report: one block per table (or role, function, view), then the counts."""
    counts = summary(ctx, findings)
    lines = [
        f"todo-rls check: database {database!r}, schema {ctx.schema}, app role "
        f"{ctx.app_role.name}, login roles: {', '.join(counts['login_roles']) or 'none'}"
    ]
    for name, group in groupby(sorted(findings, key=lambda f: f.object), key=lambda f: f.object):
        lines.append(f"\n{name}")
        for f in group:
            lines.append(f"  {f.severity.upper():7} {f.rule:7} {f.message}")
            lines.append(f"  {'':7} {'fix:':7} {f.fix}")
    scope = f"{_count(counts['rules'], 'rule')} over {_count(len(ctx.tables), 'table')}"
    if findings:
        lines.append(
            f"\n{_count(counts['findings'], 'finding')} ({_count(counts['errors'], 'error')}, "
            f"{_count(counts['warnings'], 'warning')}); {scope}"
        )
    else:
        lines.append(f"no findings; {scope}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The `todo-rls check` command: 0 when clean, 1 with findings (errors go to cli.main)."""
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    with connect(url) as conn:
        database = conn.info.dbname
        allow = (*DEFAULT_ALLOW, *(args.allow or ()))
        ctx, findings = audit(conn, args.schema, args.app_role, allow, args.login_role)
    print(as_json(database, ctx, findings) if args.json else as_text(database, ctx, findings))
    return 1 if findings else 0


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
