"""Run this repository's Alembic migrations from Python (the CLI and the tests use it)."""

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.exc import DBAPIError

from todo_rls.engine import database_url
from todo_rls.errors import MigrationPreconditionError

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(connection: Connection | None = None) -> Config:
    """Config for alembic.ini at the repository root, optionally bound to a connection."""
    if not ALEMBIC_INI.is_file():
        raise MigrationPreconditionError(
            f"{ALEMBIC_INI} not found: run todo-rls from a checkout installed with pip install -e ."
        )
    config = Config(str(ALEMBIC_INI))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(url: str | None, action: str, revision: str) -> None:
    engine = create_engine(database_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            getattr(command, action)(alembic_config(connection), revision)
            connection.commit()
    except DBAPIError as error:
        # A precondition in a migration raises with a hint that says what to do.
        if isinstance(error.orig, psycopg.errors.RaiseException):
            diag = error.orig.diag
            raise MigrationPreconditionError(
                f"{diag.message_primary}. {diag.message_hint or ''}".strip()
            ) from error
        raise
    finally:
        engine.dispose()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply migrations up to revision, all in one transaction (nothing half-applied)."""
    _run(url, "upgrade", revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Revert migrations down to revision; Better Auth's "user" table is never touched."""
    _run(url, "downgrade", revision)
