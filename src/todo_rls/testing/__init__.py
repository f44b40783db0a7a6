"""pytest plugin for apps built on todo-rls: a migrated throwaway database, users, scoped
sessions as the application role, and assert_owner_isolated for any owned table.

Load it with ``-p todo_rls.testing`` or ``pytest_plugins = ["todo_rls.testing"]``. Every name
it adds starts with ``rls_`` (fixtures) or ``--rls-`` (options), so it sits beside an app's own
database fixtures. The server: ``--rls-server-url`` or $TODO_RLS_TEST_SERVER_URL (a superuser
URL, or ``embedded``), else pytest-postgresql's ``--postgresql-host/-port/-user/-password``.
"""

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from todo_rls.engine import EngineSettings, create_engine
from todo_rls.errors import TodoRlsError
from todo_rls.session import scoped_session
from todo_rls.testing.database import (
    LOGIN_PASSWORD,
    LOGIN_ROLE,
    SERVER_URL_ENV,
    Server,
    create_user,
    migrate_database,
    server_from_setting,
)
from todo_rls.testing.isolation import RowSpec, assert_owner_isolated, find_leaks

__all__ = [
    "LOGIN_ROLE",
    "RowSpec",
    "Server",
    "assert_owner_isolated",
    "create_user",
    "find_leaks",
]

SessionAs = Callable[..., AbstractContextManager[Session]]
AssertOwnerIsolated = Callable[..., None]


def pytest_addoption(parser: pytest.Parser) -> None:
    """--rls-server-url and --rls-alembic-ini (also the ini option rls_alembic_ini)."""
    group = parser.getgroup("todo-rls", "todo-rls test database")
    group.addoption(
        "--rls-server-url",
        help=f"superuser URL of the server to test against, or 'embedded' (default: "
        f"${SERVER_URL_ENV}, else pytest-postgresql's --postgresql-host/port/user/password)",
    )
    group.addoption(
        "--rls-alembic-ini",
        action="append",
        default=[],
        help="your app's alembic.ini: `upgrade head` runs after todo-rls's migrations (repeatable)",
    )
    parser.addini(
        "rls_alembic_ini", type="paths", default=[], help="as --rls-alembic-ini, one a line"
    )


def _find_server(request: pytest.FixtureRequest) -> Server:
    url = request.config.getoption("rls_server_url") or os.environ.get(SERVER_URL_ENV)
    if url:
        data_dir = request.config.rootpath / ".todo-rls" / "test-pgdata"
        try:
            return server_from_setting(url, data_dir)
        except TodoRlsError as error:
            pytest.exit(f"todo_rls.testing: {error}", returncode=3)
    config = _pytest_postgresql().config.get_config(request)
    return Server(
        host=str(config.host),
        port=int(config.port or 5432),
        user=str(config.user),
        password=str(config.password) if config.password else None,
    )


@pytest.fixture(scope="session")
def rls_server(request: pytest.FixtureRequest) -> Server:
    """The PostgreSQL server (as its superuser) the rls_ fixtures create databases on."""
    server = _find_server(request)
    problem = server.unreachable()
    if problem:
        pytest.exit(
            f"todo_rls.testing: no PostgreSQL at {server.host}:{server.port} as {server.user}"
            f" ({problem}); pass --rls-server-url or set {SERVER_URL_ENV}",
            returncode=3,
        )
    return server


def _downstream_migrations(config: pytest.Config) -> list[Path]:
    given = [Path(p).resolve() for p in config.getoption("rls_alembic_ini")]
    paths = given or [Path(p) for p in config.getini("rls_alembic_ini")]
    for path in paths:
        if not path.is_file():
            raise pytest.UsageError(f"--rls-alembic-ini / rls_alembic_ini: {path} is no file")
    return paths


def _pytest_postgresql() -> Any:
    """pytest-postgresql, imported on first use: a registered plugin loads in every pytest run
    of an environment that has todo-rls, and must not break runs that lack the extra."""
    try:
        import pytest_postgresql.config
        import pytest_postgresql.janitor
    except ImportError as error:
        raise pytest.UsageError(
            "todo_rls.testing needs pytest-postgresql: pip install 'todo-rls[testing]'"
        ) from error
    return pytest_postgresql


def _janitor(server: Server, dbname: str, **kwargs: Any) -> Any:
    return _pytest_postgresql().janitor.DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=dbname,
        **kwargs,
    )


@pytest.fixture(scope="session")
def rls_template(rls_server: Server, pytestconfig: pytest.Config) -> Iterator[str]:
    """A template database, migrated once per run: Better Auth's "user", todo-rls, your app."""
    name = f"todo_rls_plugin_{os.getpid()}_{secrets.token_hex(3)}"
    downstream = _downstream_migrations(pytestconfig)
    with _janitor(rls_server, name, as_template=True):
        migrate_database(rls_server, name, downstream)
        yield name


@pytest.fixture
def rls_database(rls_server: Server, rls_template: str) -> Iterator[str]:
    """Name of this test's own copy of the migrated database, dropped after the test."""
    name = f"{rls_template}_{secrets.token_hex(3)}"
    with _janitor(rls_server, name, template_dbname=rls_template):
        yield name


@pytest.fixture
def rls_admin(rls_server: Server, rls_database: str) -> Iterator[psycopg.Connection[Any]]:
    """Superuser connection (autocommit) to rls_database, for arranging data only: RLS does
    not bind it, so never assert isolation through it."""
    with rls_server.connect(rls_database, autocommit=True) as conn:
        yield conn


@pytest.fixture
def rls_app_url(rls_server: Server, rls_database: str) -> str:
    """URL of rls_database as the login role that is a member of todo_app."""
    url = rls_server.url(rls_database, user=LOGIN_ROLE, password=LOGIN_PASSWORD)
    return url.render_as_string(hide_password=False)


@pytest.fixture
def rls_app_engine(rls_app_url: str) -> Iterator[Engine]:
    """todo_rls.create_engine on rls_app_url, disposed after the test."""
    engine = create_engine(rls_app_url, EngineSettings())
    yield engine
    engine.dispose()


@pytest.fixture
def rls_create_user(rls_admin: psycopg.Connection[Any]) -> Callable[[], str]:
    """Call it to add a Better Auth user to rls_database; it returns the new user's id."""
    return partial(create_user, rls_admin)


@pytest.fixture
def rls_session_as(rls_app_engine: Engine) -> SessionAs:
    """``with rls_session_as(user_id) as session:``: todo_rls.scoped_session as the app role
    (keyword arguments such as set_role go to scoped_session)."""
    return partial(scoped_session, rls_app_engine)


@pytest.fixture
def rls_assert_owner_isolated(
    rls_admin: psycopg.Connection[Any], rls_app_url: str
) -> AssertOwnerIsolated:
    """``rls_assert_owner_isolated(table, row, owner_column="user_id")`` on rls_database;
    see todo_rls.testing.assert_owner_isolated."""
    return partial(assert_owner_isolated, rls_admin, rls_app_url)
