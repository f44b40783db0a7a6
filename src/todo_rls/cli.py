"""The todo-rls command line: migrate, downgrade, and the demo that proves the isolation."""

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from sqlalchemy import URL
from sqlalchemy.exc import DBAPIError

from todo_rls import migrate
from todo_rls.bench import run as bench_command
from todo_rls.check import command as rls_check
from todo_rls.demo import DEMO_ROLE, run_demo
from todo_rls.embedded import DEFAULT_DATA_DIR, DEMO_DATABASE, embedded_database_url
from todo_rls.engine import database_url
from todo_rls.errors import DatabaseUrlError, TodoRlsError
from todo_rls.stress import command as stress

URL_HELP = "database URL (default: $DATABASE_URL), as a role allowed to create tables and roles"


def _describe(url: URL) -> str:
    """Where url points, without its password: "database 'x' at host:port"."""
    host = url.host or url.query.get("host") or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"database {url.database!r} at {host}{port}"


def _given_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    return url


def _required_url(args: argparse.Namespace) -> str:
    url = _given_url(args)
    if not url:
        raise DatabaseUrlError(
            "no database URL: pass --url URL or export "
            "DATABASE_URL=postgresql://USER:PASSWORD@HOST/DBNAME"
        )
    return url


def _migrate(args: argparse.Namespace) -> int:
    url = _required_url(args)
    migrate.upgrade(url, args.revision)
    print(f"todo-rls: upgraded {_describe(database_url(url))} to {args.revision}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    url = _required_url(args)
    migrate.downgrade(url, args.revision)
    print(f"todo-rls: downgraded {_describe(database_url(url))} to {args.revision}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    url = _given_url(args)
    if url:
        where = _describe(database_url(url))
    else:
        data_dir = args.data_dir or DEFAULT_DATA_DIR
        url = embedded_database_url(data_dir)
        where = f"an embedded PostgreSQL in {data_dir} (database {DEMO_DATABASE!r})"
    return 0 if run_demo(url, where) else 1


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, minus line breaks inside words like todo-rls[embedded]."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


def _add_command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    name: str,
    description: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=description.split(";")[0],
        description=description,
        formatter_class=_HelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every todo-rls command."""
    parser = argparse.ArgumentParser(
        prog="todo-rls",
        formatter_class=_HelpFormatter,
        description="Row-level-security-first PostgreSQL schema for a multi-user Todo + AI chat "
        "backend: apply its migrations, or watch the isolation work with `todo-rls demo`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    upgrade = _add_command(
        commands,
        "migrate",
        "Apply the migrations (tables, policies, role todo_app) up to a revision; "
        'Better Auth\'s "user" table must exist first.',
        _migrate,
    )
    upgrade.add_argument("--url", help=URL_HELP)
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    downgrade = _add_command(
        commands,
        "downgrade",
        "Revert the migrations down to a revision; "
        'Better Auth\'s "user" table and its rows are never touched.',
        _downgrade,
    )
    downgrade.add_argument("--url", help=URL_HELP)
    downgrade.add_argument("--revision", default="base", help="target revision (default: base)")
    demo = _add_command(
        commands,
        "demo",
        "Show row-level security at work: alice and bob write tasks and chats, and every "
        "isolation claim is checked and marked ✓ or ✗ (exit 1 if any fails); "
        "without a URL it runs on an embedded PostgreSQL (pip install 'todo-rls[embedded]').",
        _demo,
    )
    demo.add_argument(
        "--url",
        help="admin URL (default: $DATABASE_URL): a superuser or owner allowed to create "
        f"roles; the demo creates login role {DEMO_ROLE} and checks everything as it",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        help=f"data folder of the embedded server, used when no URL is given "
        f"(default: {DEFAULT_DATA_DIR})",
    )
    stress.add_arguments(
        _add_command(
            commands,
            "stress",
            "Run many users' scoped transactions from threads and asyncio tasks at once, "
            "each checking it saw only its own rows; prints the leaks found "
            "(exit 1 on any leak or failed transaction).",
            stress.run_command,
        )
    )
    check = _add_command(
        commands,
        "check",
        "Audit a live database for row-level-security holes (read-only catalog queries, as any "
        "role); each finding names its table, rule, severity and fix; exit 0 when clean, 1 with "
        "findings, 2 when it cannot connect or is used wrongly. Rules: docs/check.md.",
        rls_check.run,
    )
    rls_check.add_arguments(check)
    bench = _add_command(
        commands,
        "bench",
        "Measure what row-level security costs: each query pattern the app runs, through the "
        "wrapper as the app role vs the same SQL as a BYPASSRLS role (median, p95, ratio, "
        "plan), round trips, latency through a delay proxy, and throughput; without a URL it "
        "runs on an embedded PostgreSQL.",
        bench_command.run,
    )
    bench_command.add_arguments(bench)
    return parser


def _database_error_hint(error: BaseException) -> str | None:
    """The fix for a database error a user can act on, or None for a bug worth a traceback."""
    if isinstance(error, psycopg.OperationalError):
        return "check that the server runs and that the URL names it"
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return "use the URL of the database owner or an admin, not the application's role"
    return None


def _fail(message: object, hint: str | None = None) -> int:
    text = " ".join(str(message).split())  # psycopg's messages span lines; errors get one
    print(f"todo-rls: error: {text}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one todo-rls command; 0 on success, 1 if a demo claim failed, 2 on an error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and args.data_dir is not None and _given_url(args):
        parser.error("--data-dir is for the embedded server: drop it, or drop --url / DATABASE_URL")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except TodoRlsError as error:
        return _fail(error)
    except (DBAPIError, psycopg.Error) as error:
        cause = error.orig if isinstance(error, DBAPIError) and error.orig else error
        hint = _database_error_hint(cause)
        if hint is None:
            raise
        primary = cause.diag.message_primary if isinstance(cause, psycopg.Error) else None
        return _fail(primary or cause, hint)
