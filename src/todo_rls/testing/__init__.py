"""pytest plugin for apps built on todo-rls: a migrated throwaway database, users, scoped
sessions as the application role, and assert_owner_isolated for any owned table.

Load it with ``-p todo_rls.testing`` or ``pytest_plugins = ["todo_rls.testing"]``. Every name
it adds starts with ``rls_`` (fixtures) or ``--rls-`` (options), so it sits beside an app's own
database fixtures. The server: ``--rls-server-url`` or $TODO_RLS_TEST_SERVER_URL (a superuser
URL, or ``embedded``), else pytest-postgresql's ``--postgresql-host/-port/-user/-password``.
Each run makes its own login role (random password, valid for a day, dropped at the end); on a
server that is not this machine only with ``--rls-allow-remote-server``. With ``--rls-citus``
the server is a Citus coordinator: each test database is made on every node, distributed by
the migrations, and dropped on every node (todo_rls.testing.citus). ``--rls-tablespace`` (or
$TODO_RLS_TEST_TABLESPACE) names a tablespace of the server for its databases, one on a RAM
disk say (with ``--rls-citus``, one of that name on every node).
"""

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlmodel import Session

from todo_rls.engine import EngineSettings, create_engine
from todo_rls.errors import TodoRlsError
from todo_rls.identity import SigningKey
from todo_rls.session import scoped_session
from todo_rls.testing.citus import CitusCluster, new_database_name
from todo_rls.testing.database import (
    SERVER_URL_ENV,
    TABLESPACE_ENV,
    LoginRole,
    Server,
    create_user,
    is_local_host,
    migrate_database,
    server_from_setting,
    users_table_ddl,
)
from todo_rls.testing.isolation import RowSpec, assert_owner_isolated, find_leaks

__all__ = [
    "LoginRole",
    "RowSpec",
    "Server",
    "assert_owner_isolated",
    "create_user",
    "find_leaks",
]

SessionAs = Callable[..., AbstractContextManager[Session]]
AssertOwnerIsolated = Callable[..., None]
# How long the run's login role's password is accepted: a run that dies without dropping the
# role leaves no login that works for long on a server that checks passwords.
LOGIN_VALID_FOR = timedelta(days=1)


def pytest_addoption(parser: pytest.Parser) -> None:
    """--rls-server-url, --rls-alembic-ini, --rls-users-ddl, --rls-allow-remote-server,
    --rls-citus and --rls-tablespace (also ini options)."""
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
    group.addoption(
        "--rls-users-ddl",
        help="SQL file that creates your users table when $TODO_RLS_USERS_TABLE names one other"
        " than Better Auth's public.\"user\" (a stand-in of Neon Auth's, for instance)",
    )
    parser.addini("rls_users_ddl", type="paths", default=[], help="as --rls-users-ddl")
    group.addoption(
        "--rls-allow-remote-server",
        action="store_true",
        help="let the run create its login role on a server that is not on this machine"
        " (by default only a Unix socket, localhost or a loopback address)",
    )
    parser.addini(
        "rls_allow_remote_server", type="bool", default=False, help="as --rls-allow-remote-server"
    )
    group.addoption(
        "--rls-citus",
        action="store_true",
        help="the server is a Citus coordinator (its postgres database has the extension and the"
        " workers registered): make each test database on every node, migrated afresh",
    )
    parser.addini("rls_citus", type="bool", default=False, help="as --rls-citus")
    group.addoption(
        "--rls-tablespace",
        help=f"make the test databases in this tablespace of the server (default:"
        f" ${TABLESPACE_ENV}): one on a RAM disk makes each copy of the template several times"
        " cheaper (with --rls-citus, one of that name on every node)",
    )
    parser.addini("rls_tablespace", default=None, help="as --rls-tablespace")


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
    config = request.config
    allowed = config.getoption("rls_allow_remote_server") or config.getini(
        "rls_allow_remote_server"
    )
    if not (allowed or is_local_host(server.host)):
        # The run creates a login role that can read every user's rows of the databases it
        # makes; on a shared or production server that must be a decision, not a default.
        pytest.exit(
            f"todo_rls.testing: {server.host} is not this machine; the plugin creates databases"
            " and a login role (member of todo_app) there. Use a throwaway local server, or pass"
            " --rls-allow-remote-server (ini: rls_allow_remote_server = true) if this server is"
            " disposable",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    problem = server.unreachable()
    if problem:
        pytest.exit(
            f"todo_rls.testing: no PostgreSQL at {server.host}:{server.port} as {server.user}"
            f" ({problem}); pass --rls-server-url or set {SERVER_URL_ENV}",
            returncode=3,
        )
    tablespace = (
        config.getoption("rls_tablespace")
        or config.getini("rls_tablespace")
        or os.environ.get(TABLESPACE_ENV)
    )
    if tablespace:
        server = replace(server, tablespace=tablespace)
        if not server.has_tablespace():
            pytest.exit(
                f"todo_rls.testing: the server has no tablespace {tablespace!r}"
                f" (--rls-tablespace, rls_tablespace or ${TABLESPACE_ENV}): create it, or unset"
                " the setting to use the server's default",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )
    return server


def _downstream_migrations(config: pytest.Config) -> list[Path]:
    given = [Path(p).resolve() for p in config.getoption("rls_alembic_ini")]
    paths = given or [Path(p) for p in config.getini("rls_alembic_ini")]
    for path in paths:
        if not path.is_file():
            raise pytest.UsageError(f"--rls-alembic-ini / rls_alembic_ini: {path} is no file")
    return paths


def _users_ddl(config: pytest.Config) -> str | None:
    given = config.getoption("rls_users_ddl")
    paths = [Path(given)] if given else [Path(p) for p in config.getini("rls_users_ddl")]
    if not paths:
        return None
    if len(paths) > 1 or not paths[0].is_file():
        raise pytest.UsageError(f"--rls-users-ddl / rls_users_ddl: {paths} is not one file")
    return paths[0].read_text()


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
def rls_login_role(
    rls_server: Server, rls_citus_cluster: CitusCluster | None
) -> Iterator[LoginRole]:
    """This run's login role (a member of todo_app, made with rls_template): a unique name, a
    random password valid for a day, dropped when the run ends (on Citus, on every node: a
    DROP ROLE reaches the workers only from a database where Citus made the role)."""
    role = LoginRole.for_this_run()
    yield role
    nodes = rls_citus_cluster.nodes if rls_citus_cluster is not None else (rls_server,)
    for node in nodes:
        with node.connect("postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role.name)))


@pytest.fixture(scope="session")
def rls_signing_key() -> SigningKey:
    """This run's signing key: random, installed in rls_template, and what rls_session_as and
    rls_assert_owner_isolated sign their contexts with."""
    return SigningKey(os.urandom(32))


@pytest.fixture(scope="session")
def rls_citus_cluster(rls_server: Server, pytestconfig: pytest.Config) -> CitusCluster | None:
    """The Citus cluster rls_server coordinates, with --rls-citus (ini rls_citus); else None."""
    if not (pytestconfig.getoption("rls_citus") or pytestconfig.getini("rls_citus")):
        return None
    try:
        cluster = CitusCluster.of(rls_server)
    except TodoRlsError as error:
        pytest.exit(f"todo_rls.testing: --rls-citus: {error}", returncode=3)
    missing = ", ".join(f"{node.host}:{node.port}" for node in cluster.workers_without_tablespace())
    if missing:
        pytest.exit(
            f"todo_rls.testing: --rls-citus: node {missing} has no tablespace"
            f" {rls_server.tablespace!r} (--rls-tablespace, rls_tablespace or ${TABLESPACE_ENV}):"
            " Citus makes each database on every node, so create it on each",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    return cluster


Migrate = Callable[[str], None]


@pytest.fixture(scope="session")
def rls_migrate(
    rls_server: Server,
    rls_login_role: LoginRole,
    rls_signing_key: SigningKey,
    pytestconfig: pytest.Config,
) -> Migrate:
    """Migrates a database: the users table (Better Auth's "user", or your --rls-users-ddl
    stand-in), todo-rls, your app, the run's signing key and login role."""
    downstream = _downstream_migrations(pytestconfig)
    try:
        users_ddl = users_table_ddl(_users_ddl(pytestconfig))
    except TodoRlsError as error:
        pytest.exit(f"todo_rls.testing: {error}", returncode=pytest.ExitCode.USAGE_ERROR)
    return partial(
        migrate_database,
        rls_server,
        downstream=downstream,
        login_role=rls_login_role.name,
        password=rls_login_role.password,
        signing_key=rls_signing_key,
        valid_for=LOGIN_VALID_FOR,
        users_ddl=users_ddl,
    )


class _CitusDatabases:
    """The migrated test databases of a Citus run. Each is made and migrated afresh (templates
    do not reach the workers), seconds each on a small cluster; rls_template's, migrated first
    to check the migrations once, is kept as a spare for the first test that asks, not made
    twice."""

    def __init__(self, cluster: CitusCluster, migrate: Migrate) -> None:
        self.cluster, self.migrate = cluster, migrate
        self.spare: str | None = None

    def _new(self) -> str:
        name = new_database_name()
        try:
            self.cluster.create_database(name)
            self.migrate(name)
        except BaseException:
            self.cluster.drop_database(name)
            raise
        return name

    @contextmanager
    def template(self) -> Iterator[str]:
        """The run's first database, a spare until a test takes it; dropped if none does."""
        self.spare = name = self._new()
        try:
            yield name
        finally:
            if self.spare is not None:
                self.spare = None
                self.cluster.drop_database(name)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A migrated database of one test (the spare if there is one), dropped after it."""
        name, self.spare = self.spare, None
        if name is None:
            name = self._new()
        try:
            yield name
        finally:
            self.cluster.drop_database(name)


@pytest.fixture(scope="session")
def _rls_citus_databases(
    rls_citus_cluster: CitusCluster | None, rls_migrate: Migrate
) -> _CitusDatabases | None:
    return None if rls_citus_cluster is None else _CitusDatabases(rls_citus_cluster, rls_migrate)


@pytest.fixture(scope="session")
def rls_template(
    rls_server: Server, _rls_citus_databases: _CitusDatabases | None, rls_migrate: Migrate
) -> Iterator[str]:
    """A template database, migrated once per run. On Citus, a migrated database that checks
    the migrations once and serves the first test; each other rls_database is migrated afresh
    (templates do not reach the workers)."""
    if _rls_citus_databases is not None:
        with _rls_citus_databases.template() as name:
            yield name
        return
    name = f"todo_rls_plugin_{os.getpid()}_{secrets.token_hex(3)}"
    rls_server.create_database(name, is_template=True)  # in --rls-tablespace, if given
    try:
        rls_migrate(name)
        yield name
    finally:
        _janitor(rls_server, name, as_template=True).drop()


@pytest.fixture
def rls_database(
    rls_server: Server, rls_template: str, _rls_citus_databases: _CitusDatabases | None
) -> Iterator[str]:
    """Name of this test's own copy of the migrated database, dropped after the test (on
    Citus: made and migrated on every node, dropped on every node)."""
    if _rls_citus_databases is not None:
        with _rls_citus_databases.database() as name:
            yield name
        return
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
def rls_app_url(rls_server: Server, rls_database: str, rls_login_role: LoginRole) -> str:
    """URL of rls_database as the run's login role, a member of todo_app."""
    url = rls_server.url(rls_database, user=rls_login_role.name, password=rls_login_role.password)
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
def rls_session_as(rls_app_engine: Engine, rls_signing_key: SigningKey) -> SessionAs:
    """``with rls_session_as(user_id) as session:``: todo_rls.scoped_session as the app role,
    signed with rls_signing_key (keyword arguments such as set_role go to scoped_session)."""
    return partial(scoped_session, rls_app_engine, signing_key=rls_signing_key)


@pytest.fixture
def rls_assert_owner_isolated(
    rls_admin: psycopg.Connection[Any], rls_app_url: str, rls_signing_key: SigningKey
) -> AssertOwnerIsolated:
    """``rls_assert_owner_isolated(table, row, owner_column="user_id", parents=None)``.

    Runs todo_rls.testing.assert_owner_isolated on rls_database, signing with rls_signing_key.
    """
    return partial(assert_owner_isolated, rls_admin, rls_app_url, signing_key=rls_signing_key)
