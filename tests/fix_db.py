"""A migrated template database, cloned per test; users, login roles and engines on it."""

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import todo_rls
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.identity import KEY_ENV, SigningKey
from todo_rls.testing import database
from todo_rls.testing.database import TABLESPACE_ENV
from todo_rls.testing.database import create_user as create_user  # re-exported ("as"): the
from todo_rls.testing.database import new_user_id as new_user_id  # tests import them from here

from fix_server import SERVER_KEY, PgServer, fail_run_for_leftovers
from fix_shared import SharedDatabase

# Roles are cluster-wide and these can read every row once they set a user id, so each run has
# its own, with a random password valid for a day, dropped when the run ends; the session-finish
# hook below fails the run if any role this run made is still there. Every role name the run
# (and the product code it calls: bench, demo, plugin) makes ends in _<pid>_<hex>.
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
APP_LOGIN = f"todo_rls_test_app_{RUN_ID}"  # member of todo_app: what a deployment logs in as
BYPASS_LOGIN = f"todo_rls_test_bypass_{RUN_ID}"  # BYPASSRLS member of todo_app: must be refused
LOGIN_PASSWORD = secrets.token_urlsafe(32)
LOGIN_VALID_FOR = timedelta(days=1)
# This run's signing key: installed in the template, and in the environment, where
# todo_rls.scoped_session (and anything else that signs without a key given) finds it.
SIGNING_KEY = SigningKey(os.urandom(32))
os.environ[KEY_ENV] = SIGNING_KEY.secret.hex()
_SCOPE_SQL = (
    "select pg_catalog.set_config('app.user_id', %s, true),"
    " pg_catalog.set_config('app.user_sig', %s, true)"
)


def scope_to(conn: psycopg.Connection[Any], user_id: str) -> None:
    """Scope conn's transaction to user_id as todo_rls.scoped_session does: with a signature."""
    conn.execute(_SCOPE_SQL, (user_id, SIGNING_KEY.sign(user_id, 60)))


_THIS_RUNS_ROLES = f"^todo_rls_[a-z_]+_{os.getpid()}_[0-9a-f]+"


def run_role_name(kind: str) -> str:
    """A unique name for a scratch role of this run: todo_rls_test_<kind>_<pid>_<hex>_<hex>."""
    return f"todo_rls_test_{kind}_{RUN_ID}_{secrets.token_hex(3)}"


def ensure_login_role(conn: psycopg.Connection[Any], name: str, *, bypass_rls: bool = False) -> str:
    """The suite's login role name (with the suite's password), a member of todo_app."""
    return database.ensure_login_role(
        conn, name, LOGIN_PASSWORD, bypass_rls=bypass_rls, valid_for=LOGIN_VALID_FOR
    )


def load_migrated_template(
    host: str, port: int, user: str, dbname: str, password: str | None = None, **_: Any
) -> None:
    """The plugin's migrated database, with the suite's login roles (on any server)."""
    server = PgServer(host, int(port), user, password)
    database.migrate_database(
        server,
        dbname,
        login_role=APP_LOGIN,
        password=LOGIN_PASSWORD,
        signing_key=SIGNING_KEY,
        valid_for=LOGIN_VALID_FOR,
    )
    with server.connect(dbname, autocommit=True) as conn:
        ensure_login_role(conn, BYPASS_LOGIN, bypass_rls=True)


def _load_template(host: str, port: int, user: str, dbname: str, **kwargs: Any) -> None:
    """pytest-postgresql loader of the suite's template: moved into the run's tablespace
    (fix_server), which every copy of it inherits, then migrated."""
    tablespace = os.environ.get(TABLESPACE_ENV)
    if tablespace:  # pytest-postgresql made it in the default one; still empty
        server = PgServer(host, int(port), user, kwargs.get("password"))
        with server.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter database {} set tablespace {}").format(
                    sql.Identifier(dbname), sql.Identifier(tablespace)
                )
            )
    load_migrated_template(host, port, user, dbname, **kwargs)


# One name per run, so parallel runs against one server never drop each other's databases, and
# a run that was killed (its template left behind) never blocks a later one with the same pid.
TEST_DBNAME = f"todo_rls_test_{os.getpid()}_{secrets.token_hex(3)}"
migrated_server = factories.postgresql_noproc(dbname=TEST_DBNAME, load=[_load_template])
migrated_database = factories.postgresql("migrated_server")


@dataclass(frozen=True)
class DatabaseOwner:
    """A scratch database owned by a login role of its own, and that role's URL."""

    database: str
    role: str
    url: str


@contextlib.contextmanager
def owned_database(server: PgServer, *, joins_verifier: bool = True) -> Iterator[DatabaseOwner]:
    """A scratch database owned by a login role of its own (CREATEROLE, not a superuser), like
    Neon's neondb_owner, with Better Auth's "user" table.

    The suite's superuser created todo_app and todo_rls_verifier (the template's migration). On
    PostgreSQL 16+ a CREATEROLE role may grant only the roles it created, so there, unless
    joins_verifier is False, an administrator's `grant todo_rls_verifier` to the owner stands in
    for what the owner's own first migration on a new server would have done (created the role,
    and with it ADMIN OPTION). On PostgreSQL 15 the owner's migration grants it itself.
    """
    role, password = run_role_name("dbowner"), secrets.token_urlsafe(24)
    with server.connect("postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login createrole password {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        if joins_verifier and conn.info.server_version >= 160000:
            conn.execute(sql.SQL("grant todo_rls_verifier to {}").format(sql.Identifier(role)))
    try:
        with server.scratch_database() as name:
            with server.connect(name, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("alter database {} owner to {}").format(
                        sql.Identifier(name), sql.Identifier(role)
                    )
                )
                conn.execute(BETTER_AUTH_USER_DDL)
                conn.execute(
                    sql.SQL('grant references on "user" to {}').format(sql.Identifier(role))
                )
            url = server.url(name, user=role, password=password)
            yield DatabaseOwner(name, role, url.render_as_string(hide_password=False))
    finally:
        with server.connect("postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture
def database_owner(pg_server: PgServer, migrated_server: Any) -> Iterator[DatabaseOwner]:
    """owned_database, after the template's migration made the roles."""
    with owned_database(pg_server) as owner:
        yield owner


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "own_database: the test changes schema, grants, roles' rights or installed keys, so it"
        " gets its own copy of the migrated template instead of the shared database",
    )


@pytest.fixture(scope="session")
def shared_database(pg_server: PgServer, migrated_server: Any) -> Iterator[SharedDatabase]:
    """One migrated database per run (per xdist worker) for the tests that change no schema or
    role: they isolate by fresh random user ids, as an application's own tests would."""
    shared = SharedDatabase(pg_server, migrated_server.template_dbname)
    try:
        yield shared
    finally:
        shared.drop()


@pytest.fixture
def dbname(request: pytest.FixtureRequest) -> Iterator[str]:
    """Name of the database this test runs in: the shared one, or with the ``own_database``
    marker its own copy of the migrated template. A test on the shared database that leaves
    its catalog changed fails (and the next test gets a fresh copy)."""
    if request.node.get_closest_marker("own_database") is not None:
        own: psycopg.Connection[Any] = request.getfixturevalue("migrated_database")
        yield own.info.dbname
        return
    shared: SharedDatabase = request.getfixturevalue("shared_database")
    yield shared.name
    shared.check_unchanged(request.node.nodeid)


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
        name = run_role_name(kind)
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


# --- no role of this run outlives it -------------------------------------------------------

_ROLES_BEFORE = pytest.StashKey[set[str]]()


def _this_runs_roles(server: PgServer) -> set[str]:
    with server.connect("postgres", autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "select rolname::text from pg_catalog.pg_roles where rolname ~ %s",
            (_THIS_RUNS_ROLES,),
        ).fetchall()
    return {name for (name,) in rows}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note the roles named like this run's before it starts (a killed run with our pid)."""
    server = session.config.stash.get(SERVER_KEY, None)
    if server is not None:
        session.config.stash[_ROLES_BEFORE] = _this_runs_roles(server)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the run's login roles, then fail the run, loudly, if any role it made is left."""
    before = session.config.stash.get(_ROLES_BEFORE, None)
    server = session.config.stash.get(SERVER_KEY, None)
    if before is None or server is None:
        return
    problems = []
    with server.connect("postgres", autocommit=True, connect_timeout=5) as conn:
        for name in (APP_LOGIN, BYPASS_LOGIN):
            try:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
            except psycopg.Error as error:
                problems.append(f"drop role {name}: {error.diag.message_primary}")
    left = sorted(_this_runs_roles(server) - before)
    if left:
        problems.append(f"roles this run created and did not drop: {', '.join(left)}")
        # Reported and failed above; dropped here so the server is clean for the next run.
        with server.connect("postgres", autocommit=True, connect_timeout=5) as conn:
            for name in left:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
    if problems:
        fail_run_for_leftovers(
            session,
            [
                f"LEFTOVER ROLES: {problem} (tests must leave the server as they found it)"
                for problem in problems
            ],
        )
