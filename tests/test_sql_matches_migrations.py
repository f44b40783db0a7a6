"""sql/ is generated from the migrations and current, it builds exactly the schema they build,
and the models match that schema."""

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool

from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.migrate import VERSION_TABLE, offline_sql
from todo_rls.models import include_object, metadata

from catalog import OUR_TABLES, Snapshot, snapshot
from fix_server import PgServer

REPO = Path(__file__).resolve().parents[1]
SQL_DIR = REPO / "sql"


def _export_sql() -> Any:
    """scripts/export_sql.py, the one writer of sql/ (./dev sql)."""
    spec = importlib.util.spec_from_file_location("export_sql", REPO / "scripts" / "export_sql.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sql_folder_is_what_the_migrations_generate(tmp_path: Path) -> None:
    generated = {path.name: path.read_text() for path in _export_sql().export(tmp_path)}
    current = {path.name: path.read_text() for path in SQL_DIR.glob("*.sql")}
    assert generated, "no revisions exported"
    assert sorted(current) == sorted(generated), "sql/ is stale: run ./dev sql"
    stale = [name for name in generated if current[name] != generated[name]]
    assert not stale, f"sql/ is stale ({', '.join(stale)}): run ./dev sql"


@pytest.mark.slow  # exports every revision twice
def test_the_export_is_deterministic(tmp_path: Path) -> None:
    export = _export_sql().export
    first = {p.name: p.read_bytes() for p in export(tmp_path / "a")}
    assert first == {p.name: p.read_bytes() for p in export(tmp_path / "b")}


def take_snapshot(server: PgServer, dbname: str) -> Snapshot:
    """The catalog snapshot of dbname, read as the superuser."""
    with server.connect(dbname) as conn:
        return snapshot(conn)


@pytest.fixture
def sql_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with Better Auth's "user" table and sql/*.sql applied in name order
    (Alembic's offline output: each file is its own BEGIN ... COMMIT)."""
    files = sorted(SQL_DIR.glob("*.sql"))
    assert files, f"no SQL files in {SQL_DIR}"
    with pg_server.scratch_database() as name:
        with pg_server.connect(name, autocommit=True) as conn:
            conn.execute(BETTER_AUTH_USER_DDL)
            for path in files:
                # No parameters: psycopg sends the file as one simple query, all statements.
                conn.execute(path.read_text())
        yield name


@pytest.fixture
def migrated_snapshot(pg_server: PgServer, dbname: str) -> Snapshot:
    """The snapshot of this test's copy of the migrated database."""
    return take_snapshot(pg_server, dbname)


def test_sql_folder_builds_the_schema_the_migrations_build(
    pg_server: PgServer, sql_database: str, migrated_snapshot: Snapshot
) -> None:
    from_sql = take_snapshot(pg_server, sql_database)
    # Guard against an empty-vs-empty pass: the migrated schema has our tables and policies.
    assert {row[0] for row in migrated_snapshot["relations"]} == set(OUR_TABLES)
    assert {"task", "conversation", "message", "user_preference"} <= set(OUR_TABLES)
    assert len(migrated_snapshot["policies"]) == 4 * len(OUR_TABLES)
    assert from_sql == migrated_snapshot


def test_the_offline_script_of_alembic_builds_the_schema_the_migrations_build(
    pg_server: PgServer, migrated_snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `alembic upgrade head --sql` prints, for a DBA to run with psql: one transaction.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    script = offline_sql("upgrade", "head")
    with pg_server.scratch_database() as name:
        with pg_server.connect(name, autocommit=True) as conn:
            conn.execute(BETTER_AUTH_USER_DDL)
            conn.execute(script)
        assert take_snapshot(pg_server, name) == migrated_snapshot


# Each change breaks one protection; the snapshot must notice it under the named topic.
SCHEMA_CHANGES = {
    "drop a policy": ("drop policy task_delete on public.task", "policies"),
    "widen a policy": ("alter policy task_select on public.task using (true)", "policies"),
    "drop force": ("alter table public.message no force row level security", "relations"),
    "grant truncate": ("grant truncate on public.task to todo_app", "table_grants"),
    "drop a constraint": (
        "alter table public.message drop constraint ck_message_role_known",
        "constraints",
    ),
    "drop an index": ("drop index public.ix_task_user_id_created_at_id", "indexes"),
    "change a default": (
        "alter table public.task alter column completed set default true",
        "columns",
    ),
    "drop a trigger": ("drop trigger task_set_updated_at on public.task", "triggers"),
    "grant execute": (
        "grant execute on function public.todo_rls_set_updated_at() to public",
        "functions",
    ),
    "revoke schema usage": ("revoke usage on schema public from todo_app", "schema_grants"),
}


@pytest.mark.slow  # builds a database from sql/ per case
@pytest.mark.parametrize(("change", "topic"), SCHEMA_CHANGES.values(), ids=SCHEMA_CHANGES.keys())
def test_snapshot_comparison_detects_a_schema_change(
    pg_server: PgServer, sql_database: str, migrated_snapshot: Snapshot, change: str, topic: str
) -> None:
    assert take_snapshot(pg_server, sql_database) == migrated_snapshot  # positive control
    with pg_server.connect(sql_database, autocommit=True) as conn:
        conn.execute(change)
    changed = take_snapshot(pg_server, sql_database)
    assert changed[topic] != migrated_snapshot[topic]
    assert {key for key in changed if changed[key] != migrated_snapshot[key]} == {topic}


def autogenerate_diff(pg_server: PgServer, dbname: str) -> list[Any]:
    """What `alembic revision --autogenerate` would emit for the models against dbname."""
    engine = create_engine(pg_server.url(dbname), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": include_object,
                    "target_metadata": metadata,
                    # as migrations/env.py says: our version table is Alembic's, not a model's
                    "version_table": VERSION_TABLE,
                },
            )
            diff: list[Any] = compare_metadata(context, metadata)
            return diff
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(pg_server: PgServer, dbname: str) -> None:
    assert autogenerate_diff(pg_server, dbname) == []


@pytest.mark.own_database  # drops an index to see the comparison notice
def test_models_comparison_detects_a_missing_index(
    pg_server: PgServer, dbname: str, admin: psycopg.Connection[Any]
) -> None:
    admin.execute("drop index public.ix_task_user_id_created_at_id")
    diff = autogenerate_diff(pg_server, dbname)
    assert [(op[0], op[1].name) for op in diff] == [("add_index", "ix_task_user_id_created_at_id")]
