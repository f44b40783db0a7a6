"""Run todo-rls's Alembic migrations from Python (the CLI, the pytest plugin and the tests)."""

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.exc import DBAPIError

from todo_rls.engine import database_url
from todo_rls.errors import MigrationPreconditionError

# Where the Alembic scripts (env.py, script.py.mako, versions/) are: inside the package when
# installed from a wheel (pyproject.toml maps migrations/ to todo_rls._migrations), at the
# repository root in a checkout or an editable install. The packaged copy wins when both exist.
PACKAGED_MIGRATIONS = Path(__file__).resolve().with_name("_migrations")
CHECKOUT_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    """The directory holding env.py and versions/, packaged or in the checkout."""
    for candidate in (PACKAGED_MIGRATIONS, CHECKOUT_MIGRATIONS):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise MigrationPreconditionError(
        f"todo-rls's migrations are in neither {PACKAGED_MIGRATIONS} nor {CHECKOUT_MIGRATIONS}:"
        " reinstall with pip install --force-reinstall todo-rls"
        " (or pip install -e . in a checkout)"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic config for todo-rls's migrations, optionally bound to a connection.

    Built in code rather than read from alembic.ini, which a wheel does not ship: upgrade and
    downgrade need only these two options (alembic.ini's file_template and timezone only name
    new revision files, which developers create with `alembic revision` in a checkout).
    """
    config = Config()
    # Config values go through configparser interpolation, so a literal % must be doubled.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
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
