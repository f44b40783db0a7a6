"""Scoping on Citus: SET LOCAL from a plpgsql function reaches the workers' policies.

Facts for the identity work (docs/citus.md, /work/coord/citus-facts.md): how the setting
must be propagated, that a SECURITY DEFINER verifier in the policies sees it on the workers
for every command, routed or fanned out, through the extended protocol and a pipeline batch,
what RESET ALL does there, what a savepoint does, and that SET ROLE to a NOLOGIN role breaks.
"""

import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql

from todo_rls.bench.roundtrips import batches

from citus_probe import SEEN_ON_NODES, TASKS_EACH, pipeline_begin_and_scope
from fix_citus import Probe

pytestmark = pytest.mark.citus

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def probe(citus_probe: Probe) -> Probe:
    """The probe database (fix_citus.citus_probe)."""
    return citus_probe


@pytest.fixture
def app_conn(probe: Probe) -> Iterator[Conn]:
    """A connection to the coordinator as the app's login role (a member of todo_app)."""
    with probe.app.connect() as conn:
        yield conn


@pytest.fixture
def admin_conn(probe: Probe) -> Iterator[Conn]:
    """A superuser connection to the coordinator, not in autocommit: transactions of its own."""
    with probe.app.cluster.coordinator.connect(probe.app.dbname) as conn:
        yield conn


def seen_on_nodes(conn: Conn) -> dict[int, str | None]:
    """Worker port -> app.user_id that node's shards saw, in conn's open transaction."""
    return dict(conn.execute(SEEN_ON_NODES).fetchall())


# How citus.propagate_set_commands = 'local' is in force when the function runs SET LOCAL.
PROPAGATION = {
    "set_config in the function": ("select probe.scope(%s)", None),
    "per session": ("select probe.scope_without_propagation(%s)", "session"),
    "alter database": ("select probe.scope_without_propagation(%s)", "database"),
}


@pytest.fixture
def database_propagation(probe: Probe) -> Iterator[Callable[[], None]]:
    """Turns propagation on for the database (ALTER DATABASE); reset after the test."""
    app = probe.app

    database = sql.Identifier(app.dbname)

    def turn_on() -> None:
        with app.admin() as conn:
            conn.execute(
                sql.SQL("alter database {} set citus.propagate_set_commands = local").format(
                    database
                )
            )

    yield turn_on
    with app.admin() as conn:
        conn.execute(
            sql.SQL("alter database {} reset citus.propagate_set_commands").format(database)
        )


@pytest.mark.parametrize(("scope", "where"), PROPAGATION.values(), ids=PROPAGATION.keys())
def test_set_local_in_a_function_reaches_every_worker(
    probe: Probe, database_propagation: Callable[[], None], scope: str, where: str | None
) -> None:
    if where == "database":
        database_propagation()
    with probe.app.cluster.coordinator.connect(probe.app.dbname) as conn:  # a new session
        if where == "session":
            conn.execute("set citus.propagate_set_commands = local")
            conn.commit()  # a session SET made in a transaction that rolls back is undone
        conn.execute(scope, (probe.alice,))
        assert conn.execute("select current_setting('app.user_id')").fetchone() == (probe.alice,)
        assert seen_on_nodes(conn) == dict.fromkeys(probe.worker_ports, probe.alice)
        conn.rollback()
        # Transaction-local: the next transaction's workers see no user ('' after a SET LOCAL
        # on a cached connection, which the policies' nullif reads as none).
        assert set(seen_on_nodes(conn).values()) <= {None, ""}
        assert conn.execute("show citus.propagate_set_commands").fetchone() == (
            "local" if where else "none",
        )


def test_without_propagation_the_workers_see_no_user(probe: Probe, admin_conn: Conn) -> None:
    admin_conn.execute("select probe.scope_without_propagation(%s)", (probe.alice,))
    # The coordinator has the user, the workers do not: reads come back empty (fail closed).
    assert admin_conn.execute("select current_setting('app.user_id')").fetchone() == (probe.alice,)
    assert seen_on_nodes(admin_conn) == dict.fromkeys(probe.worker_ports, None)


# Each statement, alone in a scoped transaction as alice: (SQL, its result). Routed ones name
# user_id; fan-out ones do not, so Citus sends them to every shard and each worker's policy
# decides. bob's rows are on the other worker.
def _statements(alice: str, bob: str) -> dict[str, tuple[str, tuple[Any, ...], object]]:
    n = TASKS_EACH
    return {
        "select routed": ("select count(*) from task where user_id = %s", (alice,), [(n,)]),
        "select fan-out": ("select user_id, count(*) from task group by 1", (), [(alice, n)]),
        "select other routed": ("select count(*) from task where user_id = %s", (bob,), [(0,)]),
        "insert": (
            "insert into task (user_id, title) values (%s, 'new') returning user_id",
            (alice,),
            [(alice,)],
        ),
        "insert for other": (
            "insert into task (user_id, title) values (%s, 'forged') returning user_id",
            (bob,),
            psycopg.errors.InsufficientPrivilege,
        ),
        "update routed": (
            "update task set completed = true where user_id = %s returning user_id",
            (alice,),
            [(alice,)] * n,
        ),
        "update fan-out": (
            "update task set completed = true returning user_id",
            (),
            [(alice,)] * n,
        ),
        "update other routed": (
            "update task set title = 'x' where user_id = %s returning 1",
            (bob,),
            [],
        ),
        "delete routed": (
            "delete from task where user_id = %s returning user_id",
            (alice,),
            [(alice,)] * n,
        ),
        "delete fan-out": ("delete from task returning user_id", (), [(alice,)] * n),
        "delete other routed": ("delete from task where user_id = %s returning 1", (bob,), []),
    }


STATEMENTS = list(_statements("alice", "bob"))


@pytest.mark.parametrize("statement", STATEMENTS)
def test_policy_verifier_sees_the_user_on_the_workers(
    probe: Probe, app_conn: Conn, statement: str
) -> None:
    query, params, expected = _statements(probe.alice, probe.bob)[statement]
    # Positive control and scope in one: the role is the app's, RLS is on for it.
    assert app_conn.execute("select probe.scope(%s)", (probe.alice,)).fetchone() == (
        probe.app.login,
    )
    assert app_conn.execute("select row_security_active('task')").fetchone() == (True,)
    if isinstance(expected, type):
        with pytest.raises(expected, match="row-level security"):
            app_conn.execute(query, params)
    else:
        rows = app_conn.execute(query, params).fetchall()
        assert sorted(rows) == expected
    app_conn.rollback()
    # Unscoped, the same statement sees and changes nothing (or is refused).
    if isinstance(expected, type) or statement.startswith("insert"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute(query, params)
    else:
        rows = app_conn.execute(query, params).fetchall()
        assert rows in ([], [(0,)])
    app_conn.rollback()


def test_pipeline_batch_scopes_the_transaction(probe: Probe, app_conn: Conn) -> None:
    statuses = pipeline_begin_and_scope(app_conn, probe.alice)
    assert statuses == ["COMMAND_OK", "TUPLES_OK", "PIPELINE_SYNC"]
    assert app_conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS
    assert app_conn.execute("select user_id, count(*) from task group by 1").fetchall() == [
        (probe.alice, TASKS_EACH)
    ]
    app_conn.commit()
    assert app_conn.execute("select count(*) from task").fetchone() == (0,)  # next: no user
    app_conn.rollback()


def traced_round_trips(conn: Conn, transaction: Callable[[], object]) -> list[str]:
    """The client's round trips of transaction() on conn (libpq trace, like the bench)."""
    with tempfile.NamedTemporaryFile() as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            transaction()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)  # libpq wrote through the same file descriptor
        return batches(trace.read().decode().splitlines())


def test_scoped_transaction_costs_the_round_trips_of_an_unscoped_one(probe: Probe) -> None:
    query = "select count(*) from task where user_id = %s"
    with probe.app.connect(prepare_threshold=None) as conn:

        def plain() -> None:
            conn.execute(query, (probe.alice,)).fetchall()
            conn.commit()

        def scoped() -> None:
            pipeline_begin_and_scope(conn, probe.alice)
            assert conn.execute(query, (probe.alice,)).fetchone() == (TASKS_EACH,)
            conn.commit()

        plain()  # warm up: connections to the workers, catalog caches
        scoped()
        assert len(traced_round_trips(conn, plain)) == 3  # control: BEGIN, query, COMMIT
        assert len(traced_round_trips(conn, scoped)) == 3  # BEGIN + scope, query, COMMIT


def remote_commands(conn: Conn, run: Callable[[], object]) -> list[str]:
    """The commands the coordinator sends to the workers while run() runs (log_remote_commands)."""
    sent: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        if message.startswith("issuing "):
            sent.append(message.removeprefix("issuing "))

    conn.add_notice_handler(collect)
    conn.execute("set citus.log_remote_commands = on")
    try:
        run()
    finally:
        conn.execute("reset citus.log_remote_commands")
        conn.remove_notice_handler(collect)
    return sent


def test_set_local_rides_on_citus_begin_to_the_worker(probe: Probe) -> None:
    routed = "select count(*) from task where user_id = %s"
    with probe.app.connect() as conn:

        def transaction(scoped: bool) -> None:
            if scoped:
                conn.execute("select probe.scope(%s)", (probe.alice,))
            conn.execute(routed, (probe.alice,)).fetchall()
            conn.commit()

        plain = remote_commands(conn, lambda: transaction(False))
        scoped = remote_commands(conn, lambda: transaction(True))
    # The same number of messages to the worker: BEGIN (carrying the SET LOCAL), query, COMMIT.
    assert len(plain) == len(scoped) == 3, (plain, scoped)
    assert "app.user_id" not in plain[0]
    assert f"set local app.user_id = '{probe.alice}'" in scoped[0]
    assert scoped[0].startswith("BEGIN")


def test_reset_all_in_the_scope_function_resets_the_workers_too(
    probe: Probe, admin_conn: Conn
) -> None:
    warnings: list[str] = []
    admin_conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
    # Not about the SETs: a busy cluster (many test databases) runs out of worker processes.
    busy = "could not start maintenance background worker"
    admin_conn.execute("set work_mem = '7MB'")  # session state a previous client left
    admin_conn.execute("set citus.propagate_set_commands = local")
    admin_conn.execute("set local work_mem = '9MB'")
    # Positive control: the workers joined the transaction with the SET LOCAL.
    workers_work_mem = "select distinct current_setting('work_mem') from task"
    assert admin_conn.execute(workers_work_mem).fetchall() == [("9MB",)]
    admin_conn.execute("select probe.scope_after_reset_all(%s)", (probe.alice,))
    # RESET ALL reset the coordinator's session and, propagated, the open worker transactions.
    assert admin_conn.execute("show work_mem").fetchone() == ("4MB",)
    assert admin_conn.execute(workers_work_mem).fetchall() == [("4MB",)]
    assert seen_on_nodes(admin_conn) == dict.fromkeys(probe.worker_ports, probe.alice)
    admin_conn.commit()
    # The session's own citus settings were reset too (the function set propagation locally).
    assert admin_conn.execute("show citus.propagate_set_commands").fetchone() == ("none",)
    assert [w for w in warnings if not w.startswith(busy)] == []


def test_release_savepoint_after_a_second_set_local_desynchronises_the_nodes(
    probe: Probe, admin_conn: Conn
) -> None:
    admin_conn.execute("set citus.propagate_set_commands = local")
    admin_conn.execute(f"set local app.user_id = '{probe.alice}'")
    admin_conn.execute("savepoint s")
    admin_conn.execute(f"set local app.user_id = '{probe.bob}'")
    admin_conn.execute("release savepoint s")
    # The coordinator keeps bob (PostgreSQL's rule); workers joining now get alice.
    assert admin_conn.execute("select current_setting('app.user_id')").fetchone() == (probe.bob,)
    assert seen_on_nodes(admin_conn) == dict.fromkeys(probe.worker_ports, probe.alice)
    admin_conn.rollback()
    # Control, the safe pattern: the user set once, before any savepoint, holds everywhere.
    admin_conn.execute("select probe.scope(%s)", (probe.alice,))
    admin_conn.execute("savepoint s")
    assert seen_on_nodes(admin_conn) == dict.fromkeys(probe.worker_ports, probe.alice)
    admin_conn.execute("release savepoint s")
    assert seen_on_nodes(admin_conn) == dict.fromkeys(probe.worker_ports, probe.alice)
    assert admin_conn.execute("select current_setting('app.user_id')").fetchone() == (probe.alice,)


def test_set_role_to_the_nologin_app_role_cannot_reach_the_workers(probe: Probe) -> None:
    with probe.app.connect() as conn:
        conn.execute("select probe.scope(%s)", (probe.alice,))
        # Positive control: as the login role the query works.
        assert conn.execute("select count(*) from task").fetchone() == (TASKS_EACH,)
        conn.rollback()
        conn.execute("select probe.scope(%s)", (probe.alice,))
        conn.execute("set local role todo_app")
        # Citus connects to the workers as the current role, and todo_app cannot log in.
        with pytest.raises(psycopg.OperationalError, match='"todo_app" is not permitted to log in'):
            conn.execute("select count(*) from task")
