"""The Citus cluster of the tests marked ``citus``, and databases made on it.

Which cluster: $TODO_RLS_CITUS_URL (a superuser URL of a coordinator database that has the
citus extension and registered workers, as ``cluster.sh start`` leaves ``postgres``), else the
3-node cluster of ../shared/citus/cluster.sh (or $TODO_RLS_CITUS_DIR/cluster.sh), started here
when Citus is installed (and stopped
again at the end if this run started it). Without either, the tests are skipped with the
reason; in CI (CI=true) they fail instead, so CI never passes by skipping them.

Each test database is made on every node (CREATE DATABASE propagated, the extension created
on each node, the same nodes registered) and dropped on every node afterwards; login roles
made here are dropped too. Roles are cluster-wide: names are unique per run.
"""

import dataclasses
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls import keys, migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.identity import SigningKey
from todo_rls.testing.citus import CitusCluster, NotACitusCoordinatorError
from todo_rls.testing.database import Server, ensure_login_role

import orphans
import ram_tablespace
from citus_probe import DROP_AUDIT_TRIGGER, PROBE_SQL, TASKS_EACH, users_on_two_workers
from fix_db import create_user

CITUS_URL_ENV = "TODO_RLS_CITUS_URL"
REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repository next to shared/ (e.g. /work/main and /work/shared); another place
# can be named with $TODO_RLS_CITUS_DIR (the folder of the prebuilt and cluster.sh).
CITUS_DIR_ENV = "TODO_RLS_CITUS_DIR"
CLUSTER_SCRIPT = (
    Path(os.environ.get(CITUS_DIR_ENV) or REPO_ROOT.parent / "shared" / "citus") / "cluster.sh"
)
CLUSTER_URL = "postgresql://postgres@127.0.0.1:9700/postgres"
CLUSTER_START_SECONDS = 180
CITUS_LOGIN_PASSWORD = "todo_rls_citus_test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "citus: needs a Citus cluster ($TODO_RLS_CITUS_URL, or ../shared/citus/cluster.sh with "
        "Citus installed); skipped without one, except in CI (CI=true), where it fails",
    )
    # pytest-xdist's marker, registered here too so --strict-markers accepts it when the run
    # has no xdist (-p no:xdist).
    config.addinivalue_line("markers", "xdist_group(name): run on one xdist worker together")


# tryfirst: xdist reads the xdist_group markers in its own modifyitems hook, which otherwise
# runs before this one (conftest plugins register after it).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every citus test in one xdist group (--dist loadgroup): one worker runs them all, so
    they do not fight over the one cluster, its nodes' databases and its module fixtures
    (and migrations on one cluster queue for each other: migrate.serialize_on_citus)."""
    for item in items:
        if item.get_closest_marker("citus") is not None:
            item.add_marker(pytest.mark.xdist_group("citus"))


def in_ci() -> bool:
    """Whether this run is CI's, where a missing cluster is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip the test for reason, or fail it in CI."""
    if in_ci():
        pytest.fail(f"CI=true, so the citus tests must run, but: {reason}", pytrace=False)
    pytest.skip(reason)


def citus_installed() -> str | None:
    """Why this machine cannot start the cluster of cluster.sh, or None when it can."""
    if not CLUSTER_SCRIPT.is_file():
        return f"no Citus cluster: ${CITUS_URL_ENV} is not set and {CLUSTER_SCRIPT} is missing"
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return f"no Citus cluster: ${CITUS_URL_ENV} is not set and pg_config is not on PATH"
    libdir = subprocess.run(  # noqa: S603 - pg_config from PATH, no input of ours
        [pg_config, "--pkglibdir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not (Path(libdir) / "citus.so").is_file():
        return (
            f"Citus is not installed in {libdir} and ${CITUS_URL_ENV} is not set: install the "
            "prebuilt (see ../shared/citus/README.md) or point the variable at a coordinator"
        )
    return None


def _cluster_sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [str(CLUSTER_SCRIPT), command],
        capture_output=True,
        text=True,
        timeout=CLUSTER_START_SECONDS,
        check=False,
    )


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """The Citus cluster of this run (see the module docstring)."""
    url = os.environ.get(CITUS_URL_ENV)
    started_here = False
    if not url:
        problem = citus_installed()
        if problem is not None:
            unavailable(problem)
        started_here = _cluster_sh("status").returncode != 0
        result = _cluster_sh("start")
        if result.returncode != 0:
            pytest.fail(f"{CLUSTER_SCRIPT} start failed:\n{result.stdout}{result.stderr}")
        url = CLUSTER_URL
    server = Server.from_url(url)
    problem = server.unreachable(timeout=10)
    if problem is not None:
        pytest.fail(f"the Citus coordinator does not answer: {url} ({problem})", pytrace=False)
    dbname = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres"
    try:
        cluster = CitusCluster.of(server, str(dbname))
    except NotACitusCoordinatorError as error:
        pytest.fail(f"${CITUS_URL_ENV}: {error}", pytrace=False)
    for node in cluster.nodes:  # what runs killed outright left (tests/orphans.py)
        ram_tablespace.drop_orphans(node)
        orphans.drop_orphan_roles(node)  # on each node, as the plugin drops its login role
    made = ram_tablespaces_on_every_node(cluster)
    if made:
        coordinator = dataclasses.replace(cluster.coordinator, tablespace=made[0][1].name)
        cluster = dataclasses.replace(cluster, coordinator=coordinator)
    try:
        yield cluster
    finally:
        left = [name for node, tablespace in made for name in ram_tablespace.drop(node, tablespace)]
        if started_here:
            _cluster_sh("stop")
        assert not left, f"LEFTOVER DATABASES on the Citus nodes (dropped now): {left}"


NodeTablespace = tuple[Server, ram_tablespace.RamTablespace]


def ram_tablespaces_on_every_node(cluster: CitusCluster) -> list[NodeTablespace]:
    """One tablespace on the RAM disk for each node, under one name (Citus propagates CREATE
    DATABASE ... TABLESPACE by name), or none if a node cannot have one."""
    name = f"todo_rls_test_ts_{os.getpid()}_{secrets.token_hex(3)}"
    made: list[NodeTablespace] = []
    for node in cluster.nodes:
        tablespace = ram_tablespace.make(node, name)
        if tablespace is None:
            for done, other in made:
                ram_tablespace.drop(done, other)
            return []
        made.append((node, tablespace))
    return made


@pytest.fixture(autouse=True)
def _citus_marker(request: pytest.FixtureRequest) -> None:
    """A test marked citus gets the cluster (or its skip, or its failure in CI) first."""
    if request.node.get_closest_marker("citus") is None:
        return
    if getattr(request.config.option, "loadgroup", False) and "@" not in request.node.nodeid:
        # An xdist worker under --dist loadgroup, and the group suffix is missing: the citus
        # tests are spread over the workers and fight over the cluster's shared roles.
        pytest.fail(
            "pytest-xdist did not group the citus tests (--dist loadgroup); pytest 9.2 broke"
            " it (pytest-xdist#1386): install pytest<9.2, as pyproject.toml's dev extra pins",
            pytrace=False,
        )
    request.getfixturevalue("citus_cluster")


@pytest.fixture
def citus_database(citus_cluster: CitusCluster) -> Iterator[str]:
    """An empty Citus database of this test (citus on every node, the nodes registered)."""
    with citus_cluster.database() as name:
        yield name


def migrate_citus_database(cluster: CitusCluster, dbname: str) -> None:
    """Better Auth's "user" table, then `todo-rls migrate` on the coordinator."""
    with cluster.coordinator.connect(dbname, autocommit=True) as conn:
        conn.execute(BETTER_AUTH_USER_DDL)
    migrate.upgrade(cluster.coordinator.url(dbname).render_as_string(hide_password=False))


@dataclass(frozen=True)
class CitusApp:
    """A migrated Citus database and a login role (member of todo_app) to connect as."""

    cluster: CitusCluster
    dbname: str
    login: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection to the coordinator as the login role."""
        return self.cluster.coordinator.connect(
            self.dbname, user=self.login, password=CITUS_LOGIN_PASSWORD, **kwargs
        )

    def url(self) -> str:
        """The coordinator URL of the database as the login role, for engines."""
        url = self.cluster.coordinator.url(
            self.dbname, user=self.login, password=CITUS_LOGIN_PASSWORD
        )
        return url.render_as_string(hide_password=False)

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection (autocommit) to the coordinator, for arranging data."""
        return self.cluster.coordinator.connect(self.dbname, autocommit=True)


@contextmanager
def login_role(cluster: CitusCluster, dbname: str) -> Iterator[str]:
    """A LOGIN member of todo_app, created through the coordinator (so on every node)."""
    name = f"todo_rls_citus_app_{os.getpid()}_{secrets.token_hex(4)}"
    with cluster.coordinator.connect(dbname, autocommit=True) as conn:
        ensure_login_role(conn, name, CITUS_LOGIN_PASSWORD)
    try:
        yield name
    finally:
        with cluster.coordinator.connect(dbname, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@contextmanager
def migrated_app(cluster: CitusCluster) -> Iterator[CitusApp]:
    """A Citus database migrated to head, the run's key installed, and an app login role."""
    with cluster.database() as dbname:
        migrate_citus_database(cluster, dbname)
        with cluster.coordinator.connect(dbname, autocommit=True) as conn:
            # The run's key ($TODO_RLS_SIGNING_KEY, which scoped sessions sign with), installed
            # through the coordinator: a reference table, so on every node.
            keys.add(conn, SigningKey.from_env())
        with login_role(cluster, dbname) as login:
            yield CitusApp(cluster, dbname, login)


# Shared databases: each Citus database costs seconds (made, extended and dropped on every
# node, migrated afresh), so the modules that change no schema share one for the run. Their
# users are new random ids (users_on_two_workers, create_user), so no test sees another's rows
# by chance; a module that changes the schema, or needs fixed ids, makes its own (migrated_app).
@pytest.fixture(scope="session")
def citus_app(citus_cluster: CitusCluster) -> Iterator[CitusApp]:
    """A Citus database migrated to head, shared by the run's citus modules, and its login."""
    with migrated_app(citus_cluster) as app:
        yield app


@dataclass(frozen=True)
class Probe:
    """The probe database: alice's rows on one worker, bob's on the other."""

    app: CitusApp
    alice: str
    bob: str
    worker_ports: frozenset[int]


@pytest.fixture(scope="session")
def citus_probe(citus_cluster: CitusCluster) -> Iterator[Probe]:
    """A Citus database of its own (not citus_app's: the probe drops the audit trigger and adds
    policies) with the probe functions, policies and two users' rows, shared by the run."""
    with migrated_app(citus_cluster) as citus_app:
        yield probe_of(citus_app)


def probe_of(citus_app: CitusApp) -> Probe:
    """The probe functions, policies and two users' rows, added to citus_app's database."""
    with citus_app.admin() as conn:
        conn.execute(PROBE_SQL)
        with conn.transaction():
            conn.execute("set local citus.enable_unsafe_triggers = on")
            conn.execute(DROP_AUDIT_TRIGGER)
        alice, bob = users_on_two_workers(conn)
        for user_id in (alice, bob):
            create_user(conn, user_id)
            conn.execute(
                "insert into public.task (user_id, title)"
                " select %s::text, 't' || g from pg_catalog.generate_series(1, %s) g",
                (user_id, TASKS_EACH),
            )
    ports = frozenset(port for _, port in citus_app.cluster.workers)
    return Probe(citus_app, alice, bob, ports)
