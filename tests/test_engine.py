"""Engines: URL parsing, PgBouncer mode, pool settings, pre-ping and connect retries."""

import asyncio
import socket
import time
from collections.abc import Awaitable
from typing import Any

import psycopg
import pytest
from sqlalchemy import URL, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

import todo_rls
from todo_rls import DatabaseUnavailableError, DatabaseUrlError, EngineSettings, database_url

from fix_db import APP_LOGIN
from fix_server import PgServer

NEON_POOLED = "ep-x-pooler.eu-central-1.aws.neon.tech"
NEON_DIRECT = "ep-x.eu-central-1.aws.neon.tech"


def free_port() -> int:
    """A local TCP port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_connects(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, fail_first: int = 0
) -> list[dict[str, Any]]:
    """Record the keyword arguments of every driver connect; the first fail_first fail."""
    attempts: list[dict[str, Any]] = []
    real_connect = engine.dialect.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs)
        if len(attempts) <= fail_first:
            raise psycopg.OperationalError("the compute is waking up")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(engine.dialect, "connect", connect)
    return attempts


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits of sync engines created from now on, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded


# --- DATABASE_URL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg_async"]
)
def test_postgres_schemes_become_psycopg(scheme: str) -> None:
    url = database_url(f"{scheme}://app:secret@db.example.test:6543/todo")
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        "secret",
        "db.example.test",
        6543,
        "todo",
    )


def test_query_parameters_are_kept() -> None:
    url = database_url(
        f"postgres://app:secret@{NEON_POOLED}/neondb?sslmode=require&channel_binding=require"
    )
    assert url.drivername == "postgresql+psycopg"
    assert dict(url.query) == {"sslmode": "require", "channel_binding": "require"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "mysql://app:secret@db.example.test/todo",
            r"'mysql' is not PostgreSQL; use postgresql://",
        ),
        ("sqlite:///todo.db", r"'sqlite' is not PostgreSQL; use postgresql://"),
        ("not a url at all", r"not a URL; expected postgresql://USER:PASSWORD@HOST/DBNAME"),
        ("://", r"not a URL; expected postgresql://"),
    ],
)
def test_non_postgres_url_is_refused_naming_the_fix(raw: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        database_url(raw)
    with pytest.raises(DatabaseUrlError, match=message):
        todo_rls.create_engine(raw)


def test_missing_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(DatabaseUrlError, match=r"DATABASE_URL is not set: export DATABASE_URL="):
        database_url()
    with pytest.raises(DatabaseUrlError, match="DATABASE_URL is not set"):
        todo_rls.create_engine()
    with pytest.raises(DatabaseUrlError, match="DATABASE_URL is not set"):
        todo_rls.create_async_engine()


def test_database_url_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, app_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", app_url)
    engine = todo_rls.create_engine()
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select current_user::text")).scalar_one() == APP_LOGIN
    finally:
        engine.dispose()


# --- PgBouncer / Neon pooled hosts ---------------------------------------------------------


def connect_params(
    monkeypatch: pytest.MonkeyPatch, host: str, pgbouncer: bool | None
) -> dict[str, Any]:
    """What create_engine hands the driver for host (no network: the one attempt fails)."""
    settings = EngineSettings(pgbouncer=pgbouncer, connect_attempts=1)
    engine = todo_rls.create_engine(f"postgresql://app:secret@{host}/neondb", settings)
    attempts = count_connects(monkeypatch, engine, fail_first=1)
    with pytest.raises(DatabaseUnavailableError):
        engine.connect()
    assert len(attempts) == 1
    return attempts[0]


@pytest.mark.parametrize(
    ("host", "pgbouncer", "prepares"),
    [
        (NEON_POOLED, None, False),
        (NEON_DIRECT, None, True),
        (NEON_DIRECT, True, False),
        (NEON_POOLED, False, True),
    ],
)
def test_prepared_statements_are_off_behind_pgbouncer(
    monkeypatch: pytest.MonkeyPatch, host: str, pgbouncer: bool | None, prepares: bool
) -> None:
    params = connect_params(monkeypatch, host, pgbouncer)
    assert params["host"] == host
    assert params["connect_timeout"] == EngineSettings().connect_timeout
    if prepares:
        assert "prepare_threshold" not in params
    else:
        assert params["prepare_threshold"] is None


@pytest.mark.parametrize(("pgbouncer", "threshold"), [(True, None), (None, 5)])
def test_pgbouncer_setting_reaches_the_psycopg_connection(
    app_url: str, pgbouncer: bool | None, threshold: int | None
) -> None:
    engine = todo_rls.create_engine(app_url, EngineSettings(pgbouncer=pgbouncer))
    try:
        with engine.connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            assert isinstance(dbapi_connection, psycopg.Connection)
            assert dbapi_connection.prepare_threshold == threshold
    finally:
        engine.dispose()


# --- pool ----------------------------------------------------------------------------------


async def test_pool_settings_are_applied(app_url: str) -> None:
    settings = EngineSettings(pool_size=3, max_overflow=2, pool_timeout=7.5, pool_recycle=120)
    engine = todo_rls.create_engine(app_url, settings)
    async_engine = todo_rls.create_async_engine(app_url, settings)
    try:
        for pool in (engine.pool, async_engine.pool):
            assert isinstance(pool, QueuePool)
            assert (pool.size(), pool.timeout()) == (3, 7.5)
            # No public getters for these; pre-ping's effect is proven further down.
            assert (pool._max_overflow, pool._recycle, pool._pre_ping) == (2, 120, True)
    finally:
        engine.dispose()
        await async_engine.dispose()


def terminate_pooled_connection(engine: Engine, pg_server: PgServer, dbname: str) -> int:
    """Kill the backend of engine's one pooled connection, as a suspended compute would."""
    with engine.connect() as conn:
        pid = int(conn.execute(text("select pg_backend_pid()")).scalar_one())
    with pg_server.connect(dbname, autocommit=True) as admin:
        # The timeout form waits until the backend is gone, so no race with the next checkout.
        terminated = admin.execute("select pg_terminate_backend(%s, 10000)", (pid,)).fetchone()
    assert terminated == (True,)
    return pid


def test_pre_ping_replaces_a_connection_the_server_closed(
    app_url: str, pg_server: PgServer, dbname: str
) -> None:
    engine = todo_rls.create_engine(app_url, EngineSettings(pool_size=1, max_overflow=0))
    try:
        dead_pid = terminate_pooled_connection(engine, pg_server, dbname)
        with engine.connect() as conn:
            assert conn.execute(text("select pg_backend_pid()")).scalar_one() != dead_pid
    finally:
        engine.dispose()


def test_without_pre_ping_a_closed_connection_fails(
    app_url: str, pg_server: PgServer, dbname: str
) -> None:
    # Control for the test above: the terminated connection really is unusable.
    settings = EngineSettings(pool_size=1, max_overflow=0, pre_ping=False)
    engine = todo_rls.create_engine(app_url, settings)
    try:
        terminate_pooled_connection(engine, pg_server, dbname)
        with pytest.raises(DBAPIError), engine.connect() as conn:
            conn.execute(text("select 1"))
    finally:
        engine.dispose()


# --- connect retries -----------------------------------------------------------------------


def test_unreachable_server_is_retried_then_named(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    port = free_port()
    settings = EngineSettings(connect_attempts=3, max_backoff=0.05)
    engine = todo_rls.create_engine(f"postgresql://app@127.0.0.1:{port}/todo", settings)
    attempts = count_connects(monkeypatch, engine)
    with pytest.raises(DatabaseUnavailableError, match=rf"127\.0\.0\.1:{port} after 3 attempts"):
        engine.connect()
    assert len(attempts) == 3
    assert len(sleeps) == 2  # a backoff between attempts, none after the last


def test_transient_failures_are_retried_until_the_connection_works(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], app_url: str
) -> None:
    engine = todo_rls.create_engine(app_url, EngineSettings(connect_attempts=3))
    attempts = count_connects(monkeypatch, engine, fail_first=2)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()
    assert len(attempts) == 3
    assert len(sleeps) == 2


def test_failures_beyond_connect_attempts_give_up(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float], app_url: str
) -> None:
    engine = todo_rls.create_engine(app_url, EngineSettings(connect_attempts=2))
    attempts = count_connects(monkeypatch, engine, fail_first=2)
    with pytest.raises(DatabaseUnavailableError, match="after 2 attempts: the compute is waking"):
        engine.connect()
    assert len(attempts) == 2


@pytest.mark.parametrize("missing", ["database", "role"])
def test_missing_database_or_role_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
    pg_server: PgServer,
    dbname: str,
    missing: str,
) -> None:
    # Permanent (3D000, 28000): retrying would only delay the error that names the fix.
    if missing == "database":
        url = pg_server.url(f"{dbname}_missing")
    else:
        url = pg_server.url(dbname, user="todo_rls_test_no_such_role", password="unused")
    engine = todo_rls.create_engine(
        url.render_as_string(hide_password=False), EngineSettings(connect_attempts=3)
    )
    attempts = count_connects(monkeypatch, engine)
    with pytest.raises(DBAPIError, match="does not exist") as raised:
        engine.connect()
    assert isinstance(raised.value.orig, psycopg.OperationalError)
    assert len(attempts) == 1
    assert sleeps == []


# --- the async engine ----------------------------------------------------------------------


@pytest.fixture
def async_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits of async engines, recorded; a blocking time.sleep fails the test."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    def recording_sleep(delay: float) -> Awaitable[None]:
        recorded.append(delay)
        return real_sleep(0)

    def blocking_sleep(delay: float) -> None:
        pytest.fail(f"the async engine blocked the event loop with time.sleep({delay})")

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    monkeypatch.setattr(time, "sleep", blocking_sleep)
    return recorded


async def test_async_engine_retries_without_blocking(
    monkeypatch: pytest.MonkeyPatch, async_sleeps: list[float]
) -> None:
    port = free_port()
    settings = EngineSettings(connect_attempts=3, max_backoff=0.05)
    engine = todo_rls.create_async_engine(f"postgresql://app@127.0.0.1:{port}/todo", settings)
    attempts = count_connects(monkeypatch, engine.sync_engine)
    try:
        with pytest.raises(DatabaseUnavailableError, match=rf":{port} after 3 attempts"):
            await engine.connect()
    finally:
        await engine.dispose()
    assert len(attempts) == 3
    assert len(async_sleeps) == 2


async def test_async_engine_connects_after_transient_failures(
    monkeypatch: pytest.MonkeyPatch, async_sleeps: list[float], app_url: str
) -> None:
    engine = todo_rls.create_async_engine(app_url, EngineSettings(connect_attempts=3))
    attempts = count_connects(monkeypatch, engine.sync_engine, fail_first=2)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
    assert len(attempts) == 3
    assert len(async_sleeps) == 2


def test_parsed_url_renders_back_with_its_password() -> None:
    url = database_url("postgresql://app:s3cret@db.example.test/todo")
    assert isinstance(url, URL)
    assert url.render_as_string(hide_password=False) == (
        "postgresql+psycopg://app:s3cret@db.example.test/todo"
    )
