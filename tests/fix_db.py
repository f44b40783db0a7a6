"""A migrated template database, cloned per test; users, login roles and engines on it."""

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import todo_rls
from todo_rls.testing import database
from todo_rls.testing.database import create_user as create_user  # re-exported ("as"): the
from todo_rls.testing.database import new_user_id as new_user_id  # tests import them from here

from fix_server import PgServer

# Cluster-wide login roles the tests connect as; created idempotently, never dropped. Their
# password is a fixed local convention, so each run lets them log in for one more day only.
APP_LOGIN = "todo_rls_test_app"  # member of todo_app: what a deployment logs in as
BYPASS_LOGIN = "todo_rls_test_bypass"  # BYPASSRLS member of todo_app: must be refused
LOGIN_PASSWORD = "todo_rls_test"
LOGIN_VALID_FOR = timedelta(days=1)


def ensure_login_role(conn: psycopg.Connection[Any], name: str, *, bypass_rls: bool = False) -> str:
    """The suite's login role name (with the suite's password), a member of todo_app."""
    return database.ensure_login_role(
        conn, name, LOGIN_PASSWORD, bypass_rls=bypass_rls, valid_for=LOGIN_VALID_FOR
    )


def load_migrated_template(
    host: str, port: int, user: str, dbname: str, password: str | None = None, **_: Any
) -> None:
    """pytest-postgresql loader: the plugin's migrated database, with the suite's login roles."""
    server = PgServer(host, int(port), user, password)
    database.migrate_database(
        server, dbname, login_role=APP_LOGIN, password=LOGIN_PASSWORD, valid_for=LOGIN_VALID_FOR
    )
    with server.connect(dbname, autocommit=True) as conn:
        ensure_login_role(conn, BYPASS_LOGIN, bypass_rls=True)


# One name per run, so parallel runs against one server never drop each other's databases, and
# a run that was killed (its template left behind) never blocks a later one with the same pid.
TEST_DBNAME = f"todo_rls_test_{os.getpid()}_{secrets.token_hex(3)}"
migrated_server = factories.postgresql_noproc(dbname=TEST_DBNAME, load=[load_migrated_template])
migrated_database = factories.postgresql("migrated_server")


@pytest.fixture
def dbname(migrated_database: psycopg.Connection[Any]) -> str:
    """Name of this test's own copy of the migrated database."""
    return migrated_database.info.dbname


@pytest.fixture
def admin(pg_server: PgServer, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """Superuser connection (autocommit) for arranging data. Never use it to assert isolation."""
    with pg_server.connect(dbname, autocommit=True) as conn:
        yield conn


@pytest.fixture
def alice(admin: psycopg.Connection[Any]) -> str:
    return create_user(admin)


@pytest.fixture
def bob(admin: psycopg.Connection[Any]) -> str:
    return create_user(admin)


@pytest.fixture
def app_url(pg_server: PgServer, dbname: str) -> str:
    """URL of this test's database as the application login role (a member of todo_app)."""
    url = pg_server.url(dbname, user=APP_LOGIN, password=LOGIN_PASSWORD)
    return url.render_as_string(hide_password=False)


class AppConnector:
    """Opens raw psycopg connections to one database as a login role; close_all() ends them."""

    def __init__(self, server: PgServer, dbname: str) -> None:
        self.server, self.dbname = server, dbname
        self.opened: list[psycopg.Connection[Any]] = []

    def __call__(self, role: str = APP_LOGIN, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = self.server.connect(self.dbname, user=role, password=LOGIN_PASSWORD, **kwargs)
        self.opened.append(conn)
        return conn

    def close_all(self) -> None:
        for conn in self.opened:
            conn.close()
        self.opened.clear()


@pytest.fixture
def connect_app(pg_server: PgServer, dbname: str) -> Iterator[AppConnector]:
    """Open raw psycopg connections as a login role (default: the app's); closed after."""
    connector = AppConnector(pg_server, dbname)
    yield connector
    connector.close_all()


@pytest.fixture(scope="module")
def module_dbname(pg_server: PgServer, migrated_server: Any) -> Iterator[str]:
    """A migrated database shared by one test module; its tests must not change it."""
    with pg_server.scratch_database(template=migrated_server.template_dbname) as name:
        yield name


@pytest.fixture
def app_engine(app_url: str) -> Iterator[Engine]:
    """The library's engine, logged in as the application role."""
    engine = todo_rls.create_engine(app_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def app_async_engine(app_url: str) -> AsyncIterator[AsyncEngine]:
    """The library's async engine, logged in as the application role."""
    engine = todo_rls.create_async_engine(app_url)
    yield engine
    await engine.dispose()


OWNED_TABLES = ("task", "conversation", "message", "user_preference")
CreateRole = Callable[..., str]


def url_as(pg_server: PgServer, dbname: str, user: str | None = None) -> str:
    """URL of this test's database as user (default: the superuser)."""
    password = LOGIN_PASSWORD if user else None
    return pg_server.url(dbname, user=user, password=password).render_as_string(hide_password=False)


@pytest.fixture
def create_role(admin: psycopg.Connection[Any]) -> Iterator[CreateRole]:
    """Create cluster-wide scratch roles with unique names; each is dropped after the test."""
    created: list[str] = []

    def create(kind: str, *attributes: str) -> str:
        name = f"todo_rls_test_{kind}_{secrets.token_hex(6)}"
        admin.execute(
            sql.SQL("create role {} {} password {}").format(
                sql.Identifier(name),
                sql.SQL(" ").join(sql.SQL(a) for a in attributes),
                sql.Literal(LOGIN_PASSWORD),
            )
        )
        created.append(name)
        return name

    yield create
    # Plain DROP ROLE, no DROP OWNED: if a role still owned a table, that must fail loudly.
    for name in reversed(created):
        admin.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.fixture
def table_owner(admin: psycopg.Connection[Any], create_role: CreateRole) -> Iterator[str]:
    """A login role of this test that owns the three tables (and is no member of todo_app)."""
    owner = create_role("owner", "login")
    rows = admin.execute(
        "select relname::text, pg_get_userbyid(relowner)::text from pg_class"
        " where relnamespace = 'public'::regnamespace and relname = any(%s)",
        (list(OWNED_TABLES),),
    ).fetchall()
    original = {str(table): str(previous) for table, previous in rows}
    alter = sql.SQL("alter table {} owner to {}")
    try:
        for table in OWNED_TABLES:
            admin.execute(alter.format(sql.Identifier(table), sql.Identifier(owner)))
        yield owner
    finally:
        for table in OWNED_TABLES:
            admin.execute(alter.format(sql.Identifier(table), sql.Identifier(original[table])))
