"""The todo-rls command line: migrate, downgrade, and the demo that proves the isolation."""

import argparse
import importlib.metadata
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from sqlalchemy import URL
from sqlalchemy.exc import DBAPIError

from todo_rls import keys_command, migrate
from todo_rls.bench import citus as bench_citus
from todo_rls.bench import run as bench_command
from todo_rls.check import command as rls_check
from todo_rls.demo import DEMO_ROLE, run_demo
from todo_rls.embedded import DEFAULT_DATA_DIR, DEMO_DATABASE, embedded_database_url
from todo_rls.engine import database_url, is_pgbouncer_url
from todo_rls.errors import TodoRlsError
from todo_rls.stress import command as stress

URL_HELP = (
    "the owner's URL (default: $DATABASE_URL_DIRECT, then $DATABASE_URL): the role that owns "
    "schema public and todo-rls's tables, over a direct (not pooled) host; any other role is "
    "refused before anything changes"
)


def _describe(url: URL) -> str:
    """Where url points, without its password: "database 'x' at host:port"."""
    host = url.host or url.query.get("host") or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"database {url.database!r} at {host}{port}"


def _given_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    return url


def _where_it_ended(url: URL) -> str:
    """The todo-rls revision(s) url's database is at now, each with its message, or base."""
    revisions = migrate.current_revisions(url)
    if not revisions:
        return "base (no todo-rls revision applied; Better Auth's tables untouched)"
    return ", ".join(migrate.describe_revision(revision) for revision in revisions)


def _migration(args: argparse.Namespace, action: str) -> int:
    """Run migrate.upgrade or migrate.downgrade as the CLI does, then say where it ended."""
    target = migrate.migration_url(args.url)
    if is_pgbouncer_url(target.url):
        print(
            f"todo-rls: warning: {target.source} names a pooled host (-pooler); migrations "
            "belong on the direct URL (Neon advises it; docs/neon.md)",
            file=sys.stderr,
        )
    rendered = target.url.render_as_string(hide_password=False)
    getattr(migrate, action)(rendered, args.revision)
    verb = "upgraded" if action == "upgrade" else "downgraded"
    print(
        f"todo-rls: {verb} {_describe(target.url)} (URL from {target.source}); it is now at "
        f"{_where_it_ended(target.url)}"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    return _migration(args, "upgrade")


def _downgrade(args: argparse.Namespace) -> int:
    return _migration(args, "downgrade")


def _demo(args: argparse.Namespace) -> int:
    url = _given_url(args)
    if url:
        where = _describe(database_url(url))
    else:
        data_dir = args.data_dir or DEFAULT_DATA_DIR
        url = embedded_database_url(data_dir)
        where = f"an embedded PostgreSQL in {data_dir} (database {DEMO_DATABASE!r})"
    return 0 if run_demo(url, where) else 1


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, as pip installed it)."""
    try:
        return importlib.metadata.version("todo-rls")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


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
    parser.add_argument("--version", action="version", version=f"todo-rls {_version()}")
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
        "Revert the migrations down to a revision, which must be given (--revision base removes "
        'everything of todo-rls); Better Auth\'s "user" table and its rows are never touched.',
        _downgrade,
    )
    downgrade.add_argument("--url", help=URL_HELP)
    downgrade.add_argument(
        "--revision",
        required=True,
        help="target revision, required: a revision id, -1 for one step back, or base to "
        "remove every table, policy and function of todo-rls (rows included)",
    )
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
        f"roles; the demo creates a login role for the run ({DEMO_ROLE}_*), checks everything "
        "as it, and drops it at the end",
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
    bench_citus.add_arguments(
        _add_command(
            commands,
            "bench-citus",
            "Compare the app's query patterns on a Citus cluster with a single PostgreSQL "
            "server in one run (scoped sessions as a login of todo_app, interleaved), and "
            "measure a query that fans out to every shard; docs/citus.md has the figures.",
            bench_citus.run,
        )
    )
    keys_command.add_arguments(
        _add_command(
            commands,
            "keys",
            "Manage the keys the database verifies each transaction's user with: generate one, "
            "add the one in $TODO_RLS_SIGNING_KEY, list them, retire one after its successor is "
            "deployed. As the database owner.",
            keys_command.run,
        )
    )
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
