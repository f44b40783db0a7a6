"""Alembic environment: DATABASE_URL from the environment, or a connection a caller hands in."""

import os

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from todo_rls.engine import database_url
from todo_rls.models import include_object, metadata

# A migration waits at most this long for a lock, so it never queues behind live traffic
# (and never makes that traffic queue behind it) for long; rerun it when traffic is low.
LOCK_TIMEOUT = os.environ.get("TODO_RLS_LOCK_TIMEOUT", "5s")

config = context.config


def run_migrations(connection: Connection | None) -> None:
    """Run every pending migration in one transaction under a lock timeout."""
    if connection is None:  # offline: print the SQL (alembic upgrade head --sql)
        context.configure(
            url=database_url(os.environ.get("DATABASE_URL") or "postgresql://"),
            literal_binds=True,
            target_metadata=metadata,
            include_object=include_object,
        )
    else:
        context.configure(
            connection=connection, target_metadata=metadata, include_object=include_object
        )
    with context.begin_transaction():
        context.execute(
            text("select pg_catalog.set_config('lock_timeout', :timeout, true)").bindparams(
                timeout=LOCK_TIMEOUT
            )
        )
        context.run_migrations()


def run_online() -> None:
    """Migrate over the connection in config.attributes, else over DATABASE_URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    run_migrations(None)
else:
    run_online()
