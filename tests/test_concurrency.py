"""Threads and asyncio tasks, each acting as its own user, never see another user's rows.

16 threads and 64 asyncio tasks run 1,200 scoped transactions (todo_rls.stress), once straight
to the server and once through a transaction-mode PgBouncer: every worker interleaves with all
the others 15 times (through PgBouncer, each of its 3 server connections serves some 400 of
them, one user after another). Longer soaks are `todo-rls stress` (docs/pooling.md), not the
suite's.
Every transaction checks its own app.user_id, that its new row is visible (positive control)
and that nothing else is; unscoped transactions in between must see nothing. pytest -s prints
the counts.
"""

import json
from typing import Any

import psycopg
import pytest

from todo_rls import InvalidInputError, cli
from todo_rls.stress import StressPlan, StressResult, run_stress

from fix_db import create_user, url_as
from fix_pgbouncer import PgBouncer
from fix_server import PgServer

# The stress runs count every task of the database and weaken a policy on purpose; each takes
# seconds (test_session.py and test_pgbouncer.py keep pooled state in the fast tier).
pytestmark = [pytest.mark.own_database, pytest.mark.slow]

THREADS = 16
TASKS = 64
TRANSACTIONS = 1_200  # 15 scoped (and 2 unscoped) per worker


def run_and_check(url: str, users: list[str], *, pgbouncer: bool) -> StressResult:
    plan = StressPlan(users=users, threads=THREADS, tasks=TASKS, transactions=TRANSACTIONS)
    result = run_stress(url, plan, pgbouncer=pgbouncer)
    print(f"\n{'through PgBouncer' if pgbouncer else 'direct'}: {result.summary()}")
    message = f"{result.summary()}; {result.samples}"
    assert result.leaks == 0, message
    assert result.errors == 0, message
    assert result.transactions == TRANSACTIONS, message
    assert result.unscoped >= TRANSACTIONS // plan.unscoped_every, message
    assert result.users == THREADS + TASKS, message
    return result


@pytest.fixture
def users(admin: psycopg.Connection[Any]) -> list[str]:
    """One user per worker."""
    return [create_user(admin) for _ in range(THREADS + TASKS)]


def test_threads_and_tasks_direct_see_only_their_own_rows(
    app_url: str, users: list[str], admin: psycopg.Connection[Any]
) -> None:
    run_and_check(app_url, users, pgbouncer=False)
    # Every committed transaction left exactly one row: none lost, none doubled.
    assert admin.execute("select count(*) from task").fetchone() == (TRANSACTIONS,)


def test_threads_and_tasks_through_pgbouncer_see_only_their_own_rows(
    pgbouncer: PgBouncer, dbname: str, users: list[str], admin: psycopg.Connection[Any]
) -> None:
    result = run_and_check(pgbouncer.url(dbname), users, pgbouncer=True)
    assert admin.execute("select count(*) from task").fetchone() == (TRANSACTIONS,)
    # 80 workers on at most 3 server connections: each backend served many users.
    assert result.backends <= pgbouncer.pool_size, result.summary()
    assert result.shared_backends == result.backends, result.summary()


def test_a_weakened_policy_is_caught_as_leaks(app_url: str, admin: psycopg.Connection[Any]) -> None:
    # The control: the checks above can fail. With task_select true for everyone, the
    # workload reports each transaction that saw another user's task.
    users = [create_user(admin) for _ in range(4)]
    admin.execute("alter policy task_select on task using (true)")
    plan = StressPlan(users=users, threads=2, tasks=2, transactions=40)
    result = run_stress(app_url, plan)
    print(f"\nweakened policy: {result.summary()}")
    assert result.errors == 0, result.samples
    assert result.transactions == 40
    assert result.leaks > 0, result.summary()
    assert any("saw tasks of" in sample for sample in result.samples), result.samples


STRESS_ARGS = ["--users", "3", "--threads", "2", "--tasks", "2", "--transactions", "40"]


@pytest.mark.parametrize("weaken", [False, True])
def test_stress_command_prints_the_leaks_and_cleans_up(
    app_url: str,
    admin: psycopg.Connection[Any],
    pg_server: PgServer,
    dbname: str,
    capsys: pytest.CaptureFixture[str],
    weaken: bool,
) -> None:
    if weaken:
        admin.execute("alter policy task_select on task using (true)")
    admin_url = url_as(pg_server, dbname)
    code = cli.main(["stress", "--url", app_url, "--admin-url", admin_url, *STRESS_ARGS, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (code, report["transactions"], report["users"]) == (int(weaken), 40, 3), report
    assert (report["leaks"] > 0) is weaken, report
    # Its throwaway users are gone, and their tasks with them.
    assert admin.execute('select count(*) from "user"').fetchone() == (0,)
    assert admin.execute("select count(*) from task").fetchone() == (0,)


def test_stress_command_refuses_a_run_with_no_worker(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://app@127.0.0.1:1/none"
    with pytest.raises(SystemExit):
        cli.main(["stress", "--url", url, "--admin-url", url, "--threads", "-1"])
    assert "--threads: -1 is negative" in capsys.readouterr().err


def test_stress_refuses_users_missing_from_the_database(app_url: str) -> None:
    # Fails once, before any worker starts, instead of counting 40 identical errors.
    plan = StressPlan(users=["not_in_the_user_table"], threads=1, tasks=1, transactions=40)
    with pytest.raises(InvalidInputError, match=r'not in the "user" table .* --admin-url'):
        run_stress(app_url, plan)
