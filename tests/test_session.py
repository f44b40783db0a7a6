"""scoped_session: every transaction is bound to one user, and nothing outlives it."""

import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg
import pytest
import sqlalchemy
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session, select

import todo_rls
from todo_rls import (
    EngineSettings,
    Task,
    UnsafeRoleError,
    scoped_async_session,
    scoped_session,
)
from todo_rls import session as session_module
from todo_rls.session import current_user_id

from fix_db import APP_LOGIN, BYPASS_LOGIN, CreateRole, new_user_id, url_as
from fix_server import PgServer

PROBE = text(
    "select current_user::text as role, row_security_active('public.task') as rls, "
    "current_setting('app.user_id', true) as user_id, pg_backend_pid() as pid"
)


class Probe(NamedTuple):
    """What the server says about the transaction a session is in."""

    role: str
    rls: bool
    user_id: str | None
    pid: int


def probe(session: Session) -> Probe:
    """Role, RLS state, app.user_id and backend pid, inside session's current transaction."""
    row = session.connection().execute(PROBE).one()
    return Probe(row.role, row.rls, row.user_id, row.pid)


def visible_titles(session: Session) -> set[str]:
    return set(session.exec(select(Task.title)).all())


def add_tasks(engine: Engine, user_id: str, *titles: str) -> None:
    """Create titles as user_id's tasks, through user_id's own scoped session."""
    with scoped_session(engine, user_id) as session:
        session.add_all(Task(user_id=user_id, title=title) for title in titles)
        session.commit()


def assert_scoped_to(session: Session, user_id: str, titles: set[str]) -> Probe:
    """The session's transaction runs as the app role, with RLS on, for user_id only."""
    state = probe(session)
    assert state.role == APP_LOGIN
    assert state.rls is True
    assert state.user_id == user_id
    assert visible_titles(session) == titles
    return state


def assert_unscoped(session: Session) -> Probe:
    """A plain Session on a reused connection: RLS on, no user, so no rows."""
    state = probe(session)
    assert state.role == APP_LOGIN
    assert state.rls is True
    assert state.user_id in ("", None)
    assert visible_titles(session) == set()
    return state


ALICE_TITLES = {"alice: buy milk", "alice: call mom"}
BOB_TITLES = {"bob: fix bike"}


@pytest.fixture
def seeded(app_engine: Engine, alice: str, bob: str) -> None:
    """alice and bob each own tasks, created through their own scoped sessions."""
    add_tasks(app_engine, alice, *ALICE_TITLES)
    add_tasks(app_engine, bob, *BOB_TITLES)


@pytest.fixture
def one_connection_engine(app_url: str) -> Iterator[Engine]:
    """The library's engine with a single pooled connection, so every session reuses it."""
    engine = todo_rls.create_engine(app_url, EngineSettings(pool_size=1, max_overflow=0))
    yield engine
    engine.dispose()


# --- inside a scoped session ---------------------------------------------------------------


@pytest.mark.usefixtures("seeded")
def test_scoped_session_runs_as_app_role_with_rls_and_user(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)


@pytest.mark.usefixtures("seeded")
def test_first_transaction_sees_only_own_rows(app_engine: Engine, alice: str, bob: str) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
    with scoped_session(app_engine, bob) as session:
        assert_scoped_to(session, bob, BOB_TITLES)


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_transaction_after_commit_or_rollback_is_scoped(
    app_engine: Engine, alice: str, end: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
        getattr(session, end)()
        assert_scoped_to(session, alice, ALICE_TITLES)


@pytest.mark.usefixtures("seeded")
def test_transaction_after_database_error_is_scoped(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
        with pytest.raises(DBAPIError, match="division by zero"):
            session.connection().execute(text("select 1 / 0"))
        session.rollback()
        assert_scoped_to(session, alice, ALICE_TITLES)


@pytest.mark.usefixtures("seeded")
def test_transaction_after_exception_in_begin_block_is_scoped(
    app_engine: Engine, alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        with pytest.raises(RuntimeError, match="boom"), session.begin():
            assert_scoped_to(session, alice, ALICE_TITLES)
            session.add(Task(user_id=alice, title="alice: rolled back"))
            session.flush()
            raise RuntimeError("boom")
        assert_scoped_to(session, alice, ALICE_TITLES)


@pytest.mark.usefixtures("seeded")
def test_every_transaction_of_a_long_session_is_scoped(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        titles = set(ALICE_TITLES)
        for round_number in range(4):
            assert_scoped_to(session, alice, titles)
            title = f"alice: round {round_number}"
            session.add(Task(user_id=alice, title=title))
            session.commit()
            titles.add(title)
        assert_scoped_to(session, alice, titles)


# --- nothing outlives the transaction ------------------------------------------------------


@pytest.mark.usefixtures("seeded")
def test_pooled_connection_carries_nothing_between_users(
    one_connection_engine: Engine, alice: str, bob: str
) -> None:
    engine = one_connection_engine
    # Each scoped session commits, as a request does: a rollback would hide a session-level SET.
    with scoped_session(engine, alice) as session:
        pid = assert_scoped_to(session, alice, ALICE_TITLES).pid
        session.commit()
    with scoped_session(engine, bob) as session:
        assert assert_scoped_to(session, bob, BOB_TITLES).pid == pid
        session.commit()
    with Session(engine) as session:
        assert assert_unscoped(session).pid == pid
    with scoped_session(engine, alice) as session:
        assert assert_scoped_to(session, alice, ALICE_TITLES).pid == pid
        session.commit()
    with Session(engine) as session:
        assert assert_unscoped(session).pid == pid


@pytest.mark.usefixtures("seeded")
def test_rolled_back_scope_does_not_leak_to_next_session(
    one_connection_engine: Engine, alice: str, bob: str
) -> None:
    engine = one_connection_engine
    with scoped_session(engine, alice) as session:
        pid = assert_scoped_to(session, alice, ALICE_TITLES).pid
        session.rollback()
    with Session(engine) as session:
        assert assert_unscoped(session).pid == pid
    with scoped_session(engine, bob) as session:
        assert assert_scoped_to(session, bob, BOB_TITLES).pid == pid


@pytest.mark.usefixtures("seeded")
def test_scope_of_failed_transaction_does_not_leak_to_next_session(
    one_connection_engine: Engine, alice: str, bob: str
) -> None:
    engine = one_connection_engine
    with (
        pytest.raises(DBAPIError, match="division by zero"),
        scoped_session(engine, alice) as session,
    ):
        pid = assert_scoped_to(session, alice, ALICE_TITLES).pid
        session.connection().execute(text("select 1 / 0"))
    with Session(engine) as session:
        assert assert_unscoped(session).pid == pid
    with scoped_session(engine, bob) as session:
        assert assert_scoped_to(session, bob, BOB_TITLES).pid == pid


@pytest.mark.usefixtures("seeded")
def test_scope_is_transaction_local_not_session_level(
    one_connection_engine: Engine, alice: str
) -> None:
    engine = one_connection_engine
    with scoped_session(engine, alice) as session:
        pid = assert_scoped_to(session, alice, ALICE_TITLES).pid
        session.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.connection.dbapi_connection is not None
        assert conn.connection.dbapi_connection.autocommit is True
        row = conn.execute(PROBE).one()
        assert row.pid == pid
        assert row.user_id in ("", None)
        assert conn.exec_driver_sql("show app.user_id").scalar_one() == ""


# --- transaction options ------------------------------------------------------------------

TRANSACTION_OPTIONS = text(
    "select current_setting('transaction_isolation') as isolation, "
    "current_setting('transaction_read_only') as read_only"
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"isolation_level": "SERIALIZABLE"}, ("serializable", "off")),
        ({"isolation_level": "REPEATABLE READ"}, ("repeatable read", "off")),
        ({"postgresql_readonly": True}, ("read committed", "on")),
    ],
)
def test_scoped_transaction_keeps_the_requested_transaction_options(
    app_engine: Engine, alice: str, options: dict[str, Any], expected: tuple[str, str]
) -> None:
    # The scope opens the transaction itself, so it must send the BEGIN psycopg would have.
    engine = app_engine.execution_options(**options)
    with Session(engine) as session:  # control: the options work without scoping
        assert tuple(session.connection().execute(TRANSACTION_OPTIONS).one()) == expected
    with scoped_session(engine, alice) as session:
        assert tuple(session.connection().execute(TRANSACTION_OPTIONS).one()) == expected
        assert probe(session).user_id == alice
        session.commit()
        assert tuple(session.connection().execute(TRANSACTION_OPTIONS).one()) == expected


# --- savepoints ----------------------------------------------------------------------------


@pytest.mark.usefixtures("seeded")
def test_rolled_back_savepoint_keeps_the_scope(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
        savepoint = session.begin_nested()
        session.add(Task(user_id=alice, title="alice: in savepoint"))
        session.flush()
        assert_scoped_to(session, alice, ALICE_TITLES | {"alice: in savepoint"})
        savepoint.rollback()
        assert_scoped_to(session, alice, ALICE_TITLES)


@pytest.mark.usefixtures("seeded")
def test_savepoint_as_first_statement_keeps_the_scope(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        savepoint = session.begin_nested()
        assert_scoped_to(session, alice, ALICE_TITLES)
        savepoint.rollback()
        assert_scoped_to(session, alice, ALICE_TITLES)
        with session.begin_nested():
            session.add(Task(user_id=alice, title="alice: released"))
        assert_scoped_to(session, alice, ALICE_TITLES | {"alice: released"})


# --- user ids (the refused ones: tests/test_hostile_input.py, sync and async) -------------


def test_longest_allowed_user_id_is_accepted(app_engine: Engine, alice: str) -> None:
    add_tasks(app_engine, alice, *ALICE_TITLES)
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
    with scoped_session(app_engine, "a" * 255) as session:
        assert_scoped_to(session, "a" * 255, set())


@pytest.mark.parametrize("opaque_id", ["x' or '1'='1", "'); drop table task; --"])
def test_sql_like_user_id_is_an_opaque_id_that_sees_nothing(
    app_engine: Engine, alice: str, opaque_id: str
) -> None:
    add_tasks(app_engine, alice, *ALICE_TITLES)
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
    with scoped_session(app_engine, opaque_id) as session:
        assert_scoped_to(session, opaque_id, set())
        session.commit()
    with scoped_session(app_engine, alice) as session:  # the table and alice's rows are intact
        assert_scoped_to(session, alice, ALICE_TITLES)


# --- roles RLS would not bind --------------------------------------------------------------


def assert_refused_without_reading_or_writing(engine: Engine, user_id: str, message: str) -> None:
    """Both a write and a read through engine raise UnsafeRoleError before touching a row."""
    with scoped_session(engine, user_id) as session:
        session.add(Task(user_id=user_id, title="written by an unsafe role"))
        with pytest.raises(UnsafeRoleError, match=message):
            session.commit()
    with scoped_session(engine, user_id) as session, pytest.raises(UnsafeRoleError, match=message):
        session.exec(select(Task)).all()


def test_bypassrls_role_is_refused_and_nothing_is_read_or_written(
    app_engine: Engine, pg_server: PgServer, dbname: str, alice: str
) -> None:
    add_tasks(app_engine, alice, *ALICE_TITLES)
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)
    engine = todo_rls.create_engine(url_as(pg_server, dbname, BYPASS_LOGIN))
    try:
        assert_refused_without_reading_or_writing(engine, alice, r"has BYPASSRLS.*todo_app")
    finally:
        engine.dispose()
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)


def test_superuser_is_refused_and_nothing_is_read_or_written(
    app_engine: Engine, pg_server: PgServer, dbname: str, alice: str
) -> None:
    add_tasks(app_engine, alice, *ALICE_TITLES)
    engine = todo_rls.create_engine(url_as(pg_server, dbname))
    try:
        assert_refused_without_reading_or_writing(engine, alice, "is a superuser")
    finally:
        engine.dispose()
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)


def test_table_owner_is_refused_and_nothing_is_read_or_written(
    app_engine: Engine, pg_server: PgServer, dbname: str, alice: str, table_owner: str
) -> None:
    add_tasks(app_engine, alice, *ALICE_TITLES)
    engine = todo_rls.create_engine(url_as(pg_server, dbname, table_owner))
    try:
        assert_refused_without_reading_or_writing(engine, alice, "owns the protected tables")
    finally:
        engine.dispose()
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, ALICE_TITLES)


# --- set_role ------------------------------------------------------------------------------


@pytest.fixture
def superuser_engine(pg_server: PgServer, dbname: str) -> Iterator[Engine]:
    """The library's engine logged in as the superuser, on one connection."""
    engine = todo_rls.create_engine(
        url_as(pg_server, dbname), EngineSettings(pool_size=1, max_overflow=0)
    )
    yield engine
    engine.dispose()


@pytest.mark.usefixtures("seeded")
def test_set_role_switches_to_app_role_for_each_transaction(
    superuser_engine: Engine, pg_server: PgServer, alice: str
) -> None:
    with scoped_session(superuser_engine, alice, set_role="todo_app") as session:
        for _ in range(2):  # the first transaction and the one after commit
            state = probe(session)
            assert (state.role, state.rls, state.user_id) == ("todo_app", True, alice)
            assert visible_titles(session) == ALICE_TITLES
            session.commit()
    with superuser_engine.connect() as conn:  # the switch ended with the transaction
        assert conn.execute(PROBE).one().role == pg_server.user


def test_set_role_to_a_bypassrls_role_is_refused(superuser_engine: Engine, alice: str) -> None:
    with (
        scoped_session(superuser_engine, alice, set_role=BYPASS_LOGIN) as session,
        pytest.raises(UnsafeRoleError, match=rf"{BYPASS_LOGIN}' has BYPASSRLS"),
    ):
        session.exec(select(Task)).all()


@pytest.mark.parametrize("bad_role", ["", 7, b"todo_app"])
def test_set_role_must_be_a_role_name(app_engine: Engine, alice: str, bad_role: Any) -> None:
    with (
        pytest.raises(ValueError, match="set_role must be a role name"),
        scoped_session(app_engine, alice, set_role=bad_role),
    ):
        pytest.fail("a session was opened with an invalid set_role")


# --- helpers and drivers -------------------------------------------------------------------


def test_current_user_id_names_the_scoped_user(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        assert current_user_id(session) == alice


def test_current_user_id_of_a_plain_session_is_a_type_error(app_engine: Engine) -> None:
    with Session(app_engine) as session, pytest.raises(TypeError, match="not scoped"):
        current_user_id(session)


def test_scoped_session_needs_the_psycopg_driver() -> None:
    engine = sqlalchemy.create_engine("sqlite://")
    try:
        with (
            scoped_session(engine, new_user_id()) as session,
            pytest.raises(TypeError, match="psycopg"),
        ):
            session.connection().execute(text("select 1"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("leftover_path", [None, "pg_temp, public", "''", "pg_temp"])
def test_temp_table_left_on_a_pooled_connection_cannot_catch_the_next_users_rows(
    leftover_path: str | None, one_connection_engine: Engine, bob: str
) -> None:
    engine = one_connection_engine
    # A hostile client leaves a temp table named like ours on the shared connection, and may
    # leave a session-level search_path that puts pg_temp first (or nothing at all).
    with engine.connect() as conn:
        if leftover_path is not None:
            conn.exec_driver_sql(f"set search_path = {leftover_path}")
        conn.exec_driver_sql("create temp table task (like public.task including defaults)")
        conn.commit()
        pid = conn.exec_driver_sql("select pg_backend_pid()").scalar()
    with scoped_session(engine, bob) as session:
        assert assert_scoped_to(session, bob, set()).pid == pid  # same connection, still scoped
        session.add(Task(user_id=bob, title="bob private"))
        session.commit()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select pg_backend_pid()").scalar() == pid
        # begin_scope dropped it before bob's first statement (revision c3e8f1a7b254), so it
        # never caught a row; pg_temp last in the path is the second line of defence.
        assert (
            conn.exec_driver_sql("select pg_catalog.to_regclass('pg_temp.task')").scalar() is None
        )
    with scoped_session(engine, bob) as session:
        rows = session.connection().exec_driver_sql("select title from public.task").all()
        assert [row[0] for row in rows] == ["bob private"]


@pytest.mark.parametrize("attribute", ["bypassrls", "superuser"])
@pytest.mark.parametrize("connection", ["new connection", "pooled connection, check due"])
def test_member_of_a_bypassrls_or_superuser_role_is_refused(
    attribute: str,
    connection: str,
    pg_server: PgServer,
    dbname: str,
    admin: psycopg.Connection[Any],
    alice: str,
    create_role: CreateRole,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login = create_role("member", "login")
    engine = todo_rls.create_engine(url_as(pg_server, dbname, login))
    try:
        with scoped_session(engine, alice) as session:  # positive control: accepted until then
            assert session.connection().exec_driver_sql("select current_user").scalar() == login
        # Like a Neon console role: no BYPASSRLS itself, one SET ROLE away from it.
        bypassing = create_role(attribute, "nologin", attribute)
        admin.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(bypassing), sql.Identifier(login))
        )
        if connection == "new connection":
            engine.dispose()
        else:  # the pooled connection's last check is now ROLE_RECHECK_SECONDS old
            later = time.monotonic() + session_module.ROLE_RECHECK_SECONDS
            monkeypatch.setattr(session_module, "monotonic", lambda: later)
        with (
            scoped_session(engine, alice) as session,
            pytest.raises(
                UnsafeRoleError, match=f"'{login}' is a member of a superuser or BYPASSRLS role"
            ),
        ):
            session.connection()
    finally:
        engine.dispose()


def test_role_is_checked_on_a_connections_first_transaction_then_every_interval(
    app_engine: Engine, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[list[bytes]] = []
    real_statements = session_module._statements

    def spy(conn: Any, scope: Any, check_role: bool) -> list[Any]:
        statements = real_statements(conn, scope, check_role)
        sent.append([statement.sql for statement in statements])
        return statements

    monkeypatch.setattr(session_module, "_statements", spy)
    for _ in range(3):
        with scoped_session(app_engine, alice) as session:
            assert_scoped_to(session, alice, set())
    later = time.monotonic() + session_module.ROLE_RECHECK_SECONDS
    monkeypatch.setattr(session_module, "monotonic", lambda: later)
    with scoped_session(app_engine, alice) as session:
        assert_scoped_to(session, alice, set())

    checked = [any(b"rolbypassrls" in query for query in batch) for batch in sent]
    assert checked == [True, False, False, True]
    assert all(b"todo_rls.begin_scope(" in batch[0] for batch in sent)


def test_set_role_the_login_cannot_take_is_refused_naming_the_grant(
    pg_server: PgServer, dbname: str, app_engine: Engine, alice: str, create_role: CreateRole
) -> None:
    with scoped_session(app_engine, alice, set_role="todo_app") as session:  # a member can
        assert session.connection().exec_driver_sql("select current_user").scalar() == "todo_app"
    login = create_role("outsider", "login")
    engine = todo_rls.create_engine(url_as(pg_server, dbname, login))
    try:
        with (
            scoped_session(engine, alice, set_role="todo_app") as session,
            pytest.raises(UnsafeRoleError, match=f"must run: grant todo_app to {login}$"),
        ):
            session.connection()
    finally:
        engine.dispose()


class Member(NamedTuple):
    login: str
    engine: Engine


@pytest.fixture
def member(
    pg_server: PgServer,
    dbname: str,
    admin: psycopg.Connection[Any],
    alice: str,
    create_role: CreateRole,
) -> Iterator[Member]:
    """A scratch login in todo_app with a one-connection engine, accepted as it starts (the
    positive control); the test then makes it unsafe."""
    login = create_role("member", "login")
    admin.execute(sql.SQL("grant todo_app to {}").format(sql.Identifier(login)))
    engine = todo_rls.create_engine(
        url_as(pg_server, dbname, login), EngineSettings(pool_size=1, max_overflow=0)
    )
    try:
        with scoped_session(engine, alice) as session:
            assert session.connection().exec_driver_sql("select current_user").scalar() == login
        yield Member(login, engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("table", ["public.user_preference", "private.note"])
def test_owner_of_any_table_with_row_level_security_is_refused(
    table: str, member: Member, admin: psycopg.Connection[Any], alice: str
) -> None:
    login, engine = member
    schema, name = table.split(".")
    target = sql.Identifier(schema, name)
    if schema == "private":  # an app's own owned table, outside the core schema
        admin.execute("create schema private")
        admin.execute(sql.SQL("create table {} (user_id text)").format(target))
        admin.execute(sql.SQL("alter table {} enable row level security").format(target))
    original = admin.execute(
        "select pg_get_userbyid(relowner)::text from pg_class where oid = %s::regclass", (table,)
    ).fetchone()
    assert original is not None
    try:
        engine.dispose()  # a new connection: its first transaction checks the role
        admin.execute(sql.SQL("alter table {} owner to {}").format(target, sql.Identifier(login)))
        with (
            scoped_session(engine, alice) as session,
            pytest.raises(UnsafeRoleError, match=f"'{login}' owns the protected tables"),
        ):
            session.connection()
    finally:
        admin.execute(
            sql.SQL("alter table {} owner to {}").format(target, sql.Identifier(original[0]))
        )
        if schema == "private":
            admin.execute("drop schema private cascade")


def test_a_connection_is_refused_only_an_engine_scopes(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:  # positive control: an Engine scopes
        assert_scoped_to(session, alice, set())
    with app_engine.connect() as conn:
        # Bound to a Connection, the session would share its transaction with code outside it.
        with (
            pytest.raises(TypeError, match="needs an Engine, not a connection"),
            scoped_session(conn, alice),  # type: ignore[arg-type]
        ):
            pass
        assert conn.exec_driver_sql("select current_setting('app.user_id', true)").scalar() in (
            None,
            "",
        )


async def test_an_async_connection_is_refused(app_async_engine: AsyncEngine, alice: str) -> None:
    async with app_async_engine.connect() as conn:
        with pytest.raises(TypeError, match="needs an AsyncEngine, not a connection"):
            async with scoped_async_session(conn, alice):  # type: ignore[arg-type]
                pass


WHO_AND_RLS = text("select current_user::text, pg_catalog.row_security_active('public.task')")


def test_a_role_left_behind_on_a_pooled_connection_does_not_reach_the_next_transaction(
    member: Member, admin: psycopg.Connection[Any], alice: str, create_role: CreateRole
) -> None:
    # Like a session-level SET ROLE that SQL of an earlier client (an injection) left on a
    # pooled connection, or on a server connection behind a transaction-mode PgBouncer.
    login, engine = member
    bypassing = create_role("bypassrls", "nologin", "bypassrls")
    admin.execute(
        sql.SQL("grant {} to {}").format(sql.Identifier(bypassing), sql.Identifier(login))
    )
    with engine.connect() as conn:  # the pool's only connection
        conn.exec_driver_sql(f'set role "{bypassing}"')
        conn.commit()
        # The control, past the hook (psycopg's own BEGIN): the role stuck at session level.
        raw = conn.connection.dbapi_connection
        assert raw is not None
        assert raw.execute("select current_user::text").fetchone() == (bypassing,)
        raw.rollback()
    with scoped_session(engine, alice) as session:
        assert tuple(session.connection().execute(WHO_AND_RLS).one()) == (login, True)
    with Session(engine) as session:  # unscoped: opened clean as well
        assert tuple(session.connection().execute(WHO_AND_RLS).one()) == (login, True)


@pytest.mark.parametrize("how", ["has CREATEROLE", "member of a CREATEROLE role"])
def test_a_role_that_can_grant_itself_any_role_is_refused(
    how: str,
    member: Member,
    admin: psycopg.Connection[Any],
    alice: str,
    create_role: CreateRole,
) -> None:
    # On PostgreSQL 15, CREATEROLE can grant itself a BYPASSRLS role or the tables' owner.
    login, engine = member
    engine.dispose()  # a new connection: its first transaction checks the role
    if how == "has CREATEROLE":
        admin.execute(sql.SQL("alter role {} createrole").format(sql.Identifier(login)))
    else:
        creator = create_role("creator", "nologin", "createrole")
        admin.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(creator), sql.Identifier(login))
        )
    with (
        scoped_session(engine, alice) as session,
        pytest.raises(UnsafeRoleError, match="CREATEROLE"),
    ):
        session.connection()
