"""Every code path docs/neon.md mentions, run locally.

Already proven in tests/test_engine.py, and not repeated here: -pooler host detection and
EngineSettings(pgbouncer=...) (test_prepared_statements_are_off_behind_pgbouncer,
test_pgbouncer_setting_reaches_the_psycopg_connection), sslmode/channel_binding kept in the
URL (test_query_parameters_are_kept), pre-ping (test_pre_ping_replaces_a_connection_the_server_
closed), retries with backoff (test_transient_failures_are_retried_until_the_connection_works,
test_async_engine_connects_after_transient_failures), no retry of a wrong role or database
(test_missing_database_or_role_is_not_retried). tests/test_cli.py runs `todo-rls migrate --url`.
"""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

import todo_rls
from todo_rls import DatabaseUnavailableError, UnsafeRoleError, scoped_session
from todo_rls.identity import KEY_ENV
from todo_rls.settings import load_settings

from fix_db import LOGIN_PASSWORD, CreateRole, create_user, run_role_name, url_as
from fix_server import PgServer

NEON_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "neon.md"
POOLED = "postgresql://app:secret@ep-cool-name-123456-pooler.eu-central-1.aws.neon.tech/neondb"
DIRECT = "postgresql://app:secret@ep-cool-name-123456.eu-central-1.aws.neon.tech/neondb"


KEPT = ("TODO_RLS_TEST_SERVER_URL", KEY_ENV)


@pytest.fixture(autouse=True)
def neon_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Only the variables a test sets; none from the shell running the suite."""
    for name in list(os.environ):
        # The suite's server and the run's signing key (tests/fix_db.py) stay.
        if name.upper().startswith("TODO_RLS_") and name not in KEPT:
            monkeypatch.delenv(name)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    yield monkeypatch


def driver_params(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> list[dict[str, Any]]:
    """Every set of keyword arguments engine hands the driver; each attempt fails offline."""
    attempts: list[dict[str, Any]] = []

    def connect(*_args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs)
        raise psycopg.OperationalError("the compute is waking up")

    monkeypatch.setattr(engine.dialect, "connect", connect)
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    return attempts


# --- the pooled URL for the app, from the environment ---------------------------------------


@pytest.mark.parametrize(
    ("url", "mode", "prepares"),
    [(POOLED, None, False), (DIRECT, None, True), (POOLED, "off", True), (DIRECT, "on", False)],
)
def test_pooler_mode_and_tls_come_from_the_environment(
    neon_environment: pytest.MonkeyPatch, url: str, mode: str | None, prepares: bool
) -> None:
    neon_environment.setenv("DATABASE_URL", f"{url}?sslmode=require&channel_binding=require")
    neon_environment.setenv("TODO_RLS_CONNECT_ATTEMPTS", "1")
    neon_environment.setenv("TODO_RLS_CONNECT_TIMEOUT", "15")
    if mode:
        neon_environment.setenv("TODO_RLS_PGBOUNCER", mode)
    engine = todo_rls.create_engine()
    attempts = driver_params(neon_environment, engine)
    with pytest.raises(DatabaseUnavailableError, match="after 1 attempts"):
        engine.connect()
    [params] = attempts
    # TLS settings reach libpq untouched; the timeout is the environment's.
    assert (params["sslmode"], params["channel_binding"]) == ("require", "require")
    assert params["connect_timeout"] == 15
    assert ("prepare_threshold" not in params) is prepares
    if not prepares:
        assert params["prepare_threshold"] is None


def test_certificate_verification_settings_reach_libpq(
    neon_environment: pytest.MonkeyPatch,
) -> None:
    engine = todo_rls.create_engine(
        f"{POOLED}?sslmode=verify-full&sslrootcert=system",
        todo_rls.EngineSettings(connect_attempts=1),
    )
    attempts = driver_params(neon_environment, engine)
    with pytest.raises(DatabaseUnavailableError):
        engine.connect()
    assert (attempts[0]["sslmode"], attempts[0]["sslrootcert"]) == ("verify-full", "system")


def test_cold_start_retries_as_many_times_as_configured(
    neon_environment: pytest.MonkeyPatch,
) -> None:
    neon_environment.setenv("TODO_RLS_CONNECT_ATTEMPTS", "4")
    neon_environment.setenv("TODO_RLS_MAX_BACKOFF", "0.5")
    engine = todo_rls.create_engine(POOLED)
    attempts = driver_params(neon_environment, engine)
    with pytest.raises(DatabaseUnavailableError, match="after 4 attempts: the compute is waking"):
        engine.connect()
    assert len(attempts) == 4


# --- TLS: the URL's settings reach libpq, and a TLS mismatch is not retried -----------------


def local_url(pg_server: PgServer, dbname: str, **query: str) -> str:
    if pg_server.host.startswith("/"):
        pytest.skip("TLS settings need a TCP server; the embedded one listens on a socket")
    return pg_server.url(dbname).update_query_dict(query).render_as_string(hide_password=False)


def server_has_tls(pg_server: PgServer) -> bool:
    with pg_server.connect("postgres") as conn:
        return conn.execute("show ssl").fetchone() == ("on",)


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ({"sslmode": "require"}, "SSL was required"),
        ({"sslmode": "disable", "channel_binding": "require"}, "channel binding required"),
    ],
)
def test_tls_requirements_are_enforced_and_not_retried(
    neon_environment: pytest.MonkeyPatch,
    pg_server: PgServer,
    dbname: str,
    query: dict[str, str],
    refusal: str,
) -> None:
    if server_has_tls(pg_server) and "sslmode" in query and query["sslmode"] == "require":
        pytest.skip("the test server offers TLS, so sslmode=require is satisfied")
    sleeps: list[float] = []
    neon_environment.setattr(time, "sleep", sleeps.append)
    engine = todo_rls.create_engine(local_url(pg_server, dbname, **query))
    try:
        # A server that cannot meet the URL's TLS demands is a configuration error: one attempt.
        with pytest.raises(DBAPIError, match=refusal):
            engine.connect()
    finally:
        engine.dispose()
    assert sleeps == []


def test_sslmode_prefer_falls_back_like_libpq(pg_server: PgServer, dbname: str) -> None:
    engine = todo_rls.create_engine(local_url(pg_server, dbname, sslmode="prefer"))
    try:
        with engine.connect() as conn:
            ssl = conn.execute(text("select ssl from pg_stat_ssl where pid = pg_backend_pid()"))
            assert ssl.scalar_one() is server_has_tls(pg_server)
    finally:
        engine.dispose()


# --- roles: console roles are refused, a SQL-created role or set_role works -----------------


def guide_sql() -> str:
    """The ```sql block of docs/neon.md that creates the app's login role."""
    blocks = re.findall(r"```sql\n(.*?)```", NEON_GUIDE.read_text(), flags=re.DOTALL)
    [block] = [b for b in blocks if "create role todo_api" in b]
    return str(block)


@pytest.fixture
def owned_rows(admin: psycopg.Connection[Any]) -> tuple[str, str]:
    """alice with one task, bob with one, arranged as the superuser."""
    alice, bob = create_user(admin), create_user(admin)
    for user in (alice, bob):
        admin.execute("insert into task (user_id, title) values (%s, 'mine')", (user,))
    return alice, bob


def visible_owners(engine: Engine, user: str, **kwargs: Any) -> tuple[str, list[str]]:
    with scoped_session(engine, user, **kwargs) as session:
        role = session.execute(text("select current_user::text")).scalar_one()
        owners = session.execute(text("select user_id from task")).scalars().all()
    return str(role), list(owners)


def test_the_guides_login_role_is_bound_by_rls(
    pg_server: PgServer,
    dbname: str,
    admin: psycopg.Connection[Any],
    owned_rows: tuple[str, str],
) -> None:
    alice, _bob = owned_rows
    role = run_role_name("api")  # roles are cluster-wide: a unique name
    password = sql.Literal(LOGIN_PASSWORD).as_string(admin)
    admin.execute(guide_sql().replace("todo_api", role).replace("'…'", password))
    engine = todo_rls.create_engine(url_as(pg_server, dbname, role))
    try:
        assert visible_owners(engine, alice) == (role, [alice])
        with engine.connect() as conn:
            timeouts = conn.execute(
                text(
                    "select current_setting('idle_in_transaction_session_timeout'),"
                    " current_setting('statement_timeout')"
                )
            )
            assert tuple(timeouts.one()) == ("30s", "15s")
    finally:
        engine.dispose()
        admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture
def console_role(admin: psycopg.Connection[Any], create_role: CreateRole) -> str:
    """A login role like one made in Neon's console: a member of a BYPASSRLS role."""
    neon_superuser = create_role("neon_superuser", "nologin", "bypassrls", "createrole")
    login = create_role("console", "login")
    for granted in (neon_superuser, "todo_app"):
        admin.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(granted), sql.Identifier(login))
        )
    return login


def test_a_console_role_is_refused_unless_it_switches_to_todo_app(
    pg_server: PgServer,
    dbname: str,
    console_role: str,
    owned_rows: tuple[str, str],
    neon_environment: pytest.MonkeyPatch,
) -> None:
    alice, _bob = owned_rows
    engine = todo_rls.create_engine(url_as(pg_server, dbname, console_role))
    try:
        with pytest.raises(UnsafeRoleError, match="member of a superuser or BYPASSRLS role"):
            visible_owners(engine, alice)
        # The guide's way out: TODO_RLS_SET_ROLE, handed to scoped_session.
        neon_environment.setenv("TODO_RLS_SET_ROLE", "todo_app")
        set_role = load_settings().set_role
        assert visible_owners(engine, alice, set_role=set_role) == ("todo_app", [alice])
    finally:
        engine.dispose()
