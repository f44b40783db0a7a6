"""`todo-rls stress`: options, throwaway users around the run, and the printed result."""

import argparse
import json
import os
from dataclasses import asdict

from todo_rls.errors import DatabaseUrlError
from todo_rls.stress.plan import StressPlan
from todo_rls.stress.users import create_stress_users, delete_stress_users
from todo_rls.stress.workload import run_stress


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a count >= 0")
    return number


def _positive(value: str) -> int:
    number = _count(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `todo-rls stress`."""
    parser.add_argument(
        "--url",
        help="application URL (default: $DATABASE_URL): a login role that is a member of "
        "todo_app, never a superuser or table owner; may be a PgBouncer or Neon -pooler URL",
    )
    parser.add_argument(
        "--admin-url",
        required=True,
        help='URL allowed to insert into and delete from "user" (the same database as --url): '
        "the run creates its throwaway users there and deletes them, and their tasks, after",
    )
    parser.add_argument(
        "--users",
        type=_positive,
        default=80,
        help="distinct users (default: 80); workers take them round-robin, so at most "
        "threads + tasks of them act",
    )
    parser.add_argument("--threads", type=_count, default=16, help="threads (default: 16)")
    parser.add_argument("--tasks", type=_count, default=64, help="asyncio tasks (default: 64)")
    parser.add_argument(
        "--transactions",
        type=_positive,
        default=100_000,
        help="scoped transactions in total (default: 100000)",
    )
    parser.add_argument(
        "--pool-size", type=_positive, default=8, help="connections per engine (default: 8)"
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="the URL is a transaction-mode PgBouncer: turn off server-side prepared statements "
        "(automatic for Neon -pooler hosts)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_command(args: argparse.Namespace) -> int:
    """`todo-rls stress`: 0 when every transaction ran and none leaked, else 1."""
    url = args.url or os.environ.get("DATABASE_URL")
    if not url:
        raise DatabaseUrlError(
            "no application URL: pass --url URL or export "
            "DATABASE_URL=postgresql://USER:PASSWORD@HOST/DBNAME"
        )
    users = create_stress_users(args.admin_url, args.users)
    try:
        plan = StressPlan(
            users=users,
            threads=args.threads,
            tasks=args.tasks,
            transactions=args.transactions,
            pool_size=args.pool_size,
        )
        result = run_stress(url, plan, pgbouncer=args.pgbouncer or None)
    finally:
        delete_stress_users(args.admin_url, users)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(f"todo-rls stress: {result.summary()}")
        for sample in result.samples:
            print(f"  {sample}")
    # An error is not a leak, but a transaction that failed proved nothing: the run must be whole.
    whole = result.errors == 0 and result.transactions == args.transactions
    return 0 if result.leaks == 0 and whole else 1
