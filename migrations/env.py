"""Alembic environment: the URL from the environment (DATABASE_URL_DIRECT, else DATABASE_URL), or
a connection a caller hands in; it must be the schema's owner (todo_rls.migrate.require_owner).

todo-rls records its revisions in its own version table (todo_rls_alembic_version), so an app's
Alembic chain can keep alembic_version on the same database (ADR 0010).
"""

import os
from typing import Any

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool, text

from todo_rls.engine import database_url
from todo_rls.migrate import (
    CLOSED_SCHEMA_CHECK,
    DEFAULT_LOCK_TIMEOUT,
    LOCK_TIMEOUT_ENV,
    VERSION_TABLE,
    carry_over_versions,
    migration_url,
    require_closed_schema,
    require_owner,
    require_same_users_table,
    serialize_on_citus,
    set_lock_timeout,
)
from todo_rls.models import include_object, metadata
from todo_rls.users_table import CONTEXT_OPTION, from_environment

config = context.config


def run_migrations(connection: Connection | None) -> None:
    """Run every pending migration in one transaction under a lock timeout."""
    users_table = from_environment()  # TODO_RLS_USERS_TABLE, default public."user"
    options: dict[str, Any] = {
        CONTEXT_OPTION: users_table,  # revisions read it with users_table_of(op)
        "target_metadata": metadata,
        "include_object": include_object,
        # In the default schema, like alembic_version: autogenerate then knows it is Alembic's.
        "version_table": VERSION_TABLE,
    }
    if connection is None:  # offline: print the SQL (alembic upgrade head --sql)
        context.configure(
            url=database_url(os.environ.get("DATABASE_URL") or "postgresql://"),
            literal_binds=True,
            # Alembic's documented offline setting: psycopg's default "pyformat" would double
            # every % of the printed SQL (format('%I') would reach psql as format('%%I')).
            dialect_opts={"paramstyle": "named"},
            **options,
        )
    else:
        context.configure(connection=connection, **options)
    with context.begin_transaction():
        if connection is not None:
            # Not the owner (the pooled app role, say): stop before anything is written.
            require_owner(connection)
            # A database whose tables reference another users table must keep it.
            require_same_users_table(connection, users_table)
            # On Citus, wait for another database's migration on the cluster: before the lock
            # timeout below, which is for live traffic, not for that.
            serialize_on_citus(connection)
            set_lock_timeout(connection, LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT)
            # Before Alembic reads its version table: a database that recorded our revisions in
            # alembic_version (todo-rls 0.1) has them moved, in this same transaction.
            ours = {
                script.revision for script in ScriptDirectory.from_config(config).walk_revisions()
            }
            carry_over_versions(connection, ours)
        else:  # the printed script sets the lock timeout too
            lock_timeout = os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT)
            context.execute(
                text("select pg_catalog.set_config('lock_timeout', :timeout, true)").bindparams(
                    timeout=lock_timeout
                )
            )
        context.run_migrations()
        # At a revision of ours (not after a downgrade to base), todo_app must not be able to
        # create objects in public: checked last, since the first revision creates todo_app;
        # the printed script checks it with the same statement, before its COMMIT.
        if connection is not None:
            require_closed_schema(connection)
        else:
            context.execute(text(CLOSED_SCHEMA_CHECK))


def run_online() -> None:
    """Migrate over the connection in config.attributes, else over DATABASE_URL_DIRECT (the
    owner's direct URL), else DATABASE_URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = create_engine(migration_url().url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    run_migrations(None)
else:
    run_online()
