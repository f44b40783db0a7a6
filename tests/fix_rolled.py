"""A transaction on the test's database, rolled back after the test: break, migrate and audit.

DDL, roles, grants and database or role settings are all transactional in PostgreSQL, so a test
that builds what it needs here and checks it over the same connection leaves nothing behind and
can run on the shared database; its fingerprint check (fix_shared) fails a test that did leave
something. Alembic operations run in it too, through a SQLAlchemy connection over the same
psycopg connection (migration_connection).
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from psycopg import sql
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, create_engine, pool

from todo_rls.check.command import audit_with
from todo_rls.check.context import Conn
from todo_rls.cli import build_parser

from fix_db import APP_LOGIN, run_role_name
from fix_server import PgServer


def with_login_role(options: tuple[str, ...]) -> tuple[str, ...]:
    """options, login roles limited to the app's unless they name some.

    Roles are cluster-wide: other suites' LOGIN members of todo_app (some BYPASSRLS on purpose)
    would show up by default, so each run names the login roles it means.
    """
    return options if "--login-role" in options else (*options, "--login-role", APP_LOGIN)


class Rolled:
    """The test's transaction: run() breaks something as the superuser, report() and check()
    audit it as the CLI would; the fixture rolls it all back."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def run(self, statement: str | sql.Composed) -> None:
        """Run statement (one, or several separated by semicolons) as the superuser."""
        self.conn.execute(statement.encode() if isinstance(statement, str) else statement)

    def role(self, kind: str, *attributes: str) -> str:
        """A scratch role of this run that exists only in this transaction."""
        name = run_role_name(kind)
        self.run(
            sql.SQL("create role {} {}").format(sql.Identifier(name), sql.SQL(" ".join(attributes)))
        )
        return name

    def report(self, *options: str, login: str | None = APP_LOGIN) -> tuple[int, str]:
        """Exit code and report of `todo-rls check *options` over this transaction, as login
        (None: the superuser)."""
        args = build_parser().parse_args(["check", *with_login_role(options)])
        # A savepoint undone after the audit: login, read-only mode and search_path end with it.
        with self.conn.transaction(force_rollback=True):
            self.conn.execute("set transaction read only")  # as the CLI's connection is
            if login is not None:
                authorization = sql.SQL("set local session authorization {}")
                self.conn.execute(authorization.format(sql.Identifier(login)))
            return audit_with(self.conn, args)

    def check(self, *options: str, login: str | None = APP_LOGIN) -> tuple[int, dict[str, Any]]:
        """Exit code and JSON report, as report()."""
        code, report = self.report("--json", *options, login=login)
        return code, json.loads(report)


@pytest.fixture
def db(pg_server: PgServer, dbname: str) -> Iterator[Rolled]:
    """A transaction on the test's database (the shared one unless own_database) as the
    superuser, rolled back after the test."""
    with pg_server.connect(dbname) as conn:
        try:
            yield Rolled(conn)
        finally:
            conn.rollback()


@pytest.fixture
def migration_connection(db: Rolled) -> Iterator[Connection]:
    """db's transaction as a SQLAlchemy connection, which a real Alembic op runs on (run_op).

    Over db's own psycopg connection (creator), so the op and the test's statements are one
    transaction. SQLAlchemy rolls back the first time it connects, after reading the server's
    version: so this must come before the test runs anything in db. StaticPool does not close
    the connection when it is given back (db's fixture does), and rolls back, as db would."""
    assert db.conn.info.transaction_status == TransactionStatus.IDLE
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: db.conn, poolclass=pool.StaticPool
    )
    with engine.connect() as connection:
        yield connection


def run_op(connection: Connection, action: Any, *args: Any, **kwargs: Any) -> None:
    """Run a helper with a real Alembic op bound to connection (no commit)."""
    action(Operations(MigrationContext.configure(connection)), *args, **kwargs)
