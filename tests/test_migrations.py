"""The migrations: preconditions, up/down/up with data, the role's fate, the CLI, lock timeouts."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import select

from todo_rls import MigrationPreconditionError, Task, migrate, scoped_session
from todo_rls.demo import BETTER_AUTH_USER_DDL

from catalog import query_one, snapshot
from fix_db import APP_LOGIN, create_user
from fix_server import PgServer

REPO_ROOT = Path(__file__).resolve().parents[1]
# The alembic console script of the interpreter running the tests (.venv/bin/alembic).
ALEMBIC = Path(sys.executable).with_name("alembic")
OUR_TABLES = ("task", "conversation", "message", "user_preference")
# Bounds every statement of a migration run, so a missing lock_timeout fails instead of hanging.
STATEMENT_TIMEOUT = {"options": "-c statement_timeout=20s"}


def head_revision() -> str:
    """The newest revision in migrations/versions."""
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert head is not None
    return head


def superuser_url(server: PgServer, dbname: str) -> str:
    """dbname's URL as the superuser, password included."""
    return server.url(dbname).render_as_string(hide_password=False)


def nothing_of_ours(conn: psycopg.Connection[Any]) -> bool:
    """Whether no table, policy, function or version row of todo-rls is in conn's database."""
    return alembic_version(conn) == [] and bool(
        query_one(
            conn,
            """
            select pg_catalog.to_regclass('public.task') is null
               and pg_catalog.to_regclass('public.conversation') is null
               and pg_catalog.to_regclass('public.message') is null
               and pg_catalog.to_regclass('public.user_preference') is null
               and pg_catalog.to_regprocedure('public.todo_rls_set_updated_at()') is null
               and not exists (select from pg_catalog.pg_policies where schemaname = 'public')
               and not exists (select from pg_catalog.pg_trigger t
                               join pg_catalog.pg_class c on c.oid = t.tgrelid
                               where c.relnamespace = 'public'::regnamespace
                                 and not t.tgisinternal)
            """,
        )
    )


def has_version_table(conn: psycopg.Connection[Any]) -> bool:
    """Whether Alembic's version table exists (a failed first upgrade must roll it back too)."""
    return query_one(conn, "select pg_catalog.to_regclass('public.alembic_version')") is not None


def alembic_version(conn: psycopg.Connection[Any]) -> list[str]:
    """The revisions recorded in alembic_version (none if the table does not exist)."""
    if not has_version_table(conn):
        return []
    return [row[0] for row in conn.execute("select version_num from public.alembic_version")]


def app_role_exists(conn: psycopg.Connection[Any]) -> bool:
    """Whether the cluster still has role todo_app."""
    query = "select exists (select from pg_catalog.pg_roles where rolname = 'todo_app')"
    return bool(query_one(conn, query))


@pytest.fixture
def empty_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh empty database (no "user" table), dropped after the test."""
    with pg_server.scratch_database() as name:
        yield name


@pytest.fixture
def better_auth_database(pg_server: PgServer, empty_database: str) -> str:
    """A fresh database holding only Better Auth's "user" table: what a deployment starts from."""
    with pg_server.connect(empty_database, autocommit=True) as conn:
        conn.execute(BETTER_AUTH_USER_DDL)
    return empty_database


def test_upgrade_without_user_table_asks_for_better_auth_migration_and_writes_nothing(
    pg_server: PgServer, empty_database: str
) -> None:
    with pg_server.connect(empty_database, autocommit=True) as conn:
        before = snapshot(conn)
        with pytest.raises(MigrationPreconditionError, match="Run Better Auth's migration first"):
            migrate.upgrade(superuser_url(pg_server, empty_database))
        # One transaction: even Alembic's own version table was rolled back.
        assert not has_version_table(conn)
        assert nothing_of_ours(conn)
        assert snapshot(conn) == before


def test_upgrade_refuses_a_user_table_whose_id_is_not_text(
    pg_server: PgServer, empty_database: str
) -> None:
    with pg_server.connect(empty_database, autocommit=True) as conn:
        conn.execute('create table "user" (id integer primary key, name text not null)')
        before = snapshot(conn)
        with pytest.raises(MigrationPreconditionError, match=r'"user"\.id .* not of type text'):
            migrate.upgrade(superuser_url(pg_server, empty_database))
        assert not has_version_table(conn)
        assert nothing_of_ours(conn)
        assert snapshot(conn) == before


def insert_owned_rows(conn: psycopg.Connection[Any], user_id: str) -> None:
    """One task, conversation and message for user_id (arranged as the superuser)."""
    conn.execute("insert into task (user_id, title) values (%s, 'before downgrade')", (user_id,))
    conversation = query_one(
        conn, "insert into conversation (user_id) values (%s) returning id", user_id
    )
    conn.execute(
        "insert into message (conversation_id, user_id, role, content)"
        " values (%s, %s, 'user', 'hello')",
        (conversation, user_id),
    )


def user_ids(conn: psycopg.Connection[Any]) -> list[str]:
    """Every id in Better Auth's "user" table, sorted."""
    return [row[0] for row in conn.execute('select id from "user" order by id')]


def test_downgrade_to_base_keeps_users_and_upgrade_restores_the_same_schema(
    pg_server: PgServer, dbname: str, admin: psycopg.Connection[Any], app_engine: Engine
) -> None:
    alice, bob = create_user(admin), create_user(admin)
    for user_id in (alice, bob):
        insert_owned_rows(admin, user_id)
    users_before = user_ids(admin)
    assert users_before == sorted([alice, bob])
    original = snapshot(admin)
    assert alembic_version(admin) == [head_revision()]
    assert not nothing_of_ours(admin)  # positive control for the check below

    migrate.downgrade(superuser_url(pg_server, dbname), "base")

    assert nothing_of_ours(admin)
    assert alembic_version(admin) == []
    assert user_ids(admin) == users_before
    assert ("todo_app", "USAGE", False) not in snapshot(admin)["schema_grants"]
    assert app_role_exists(admin)  # its login members keep it

    migrate.upgrade(superuser_url(pg_server, dbname))

    assert alembic_version(admin) == [head_revision()]
    assert snapshot(admin) == original
    with scoped_session(app_engine, alice) as session:
        assert session.connection().exec_driver_sql("select current_user").scalar() == APP_LOGIN
        session.add(Task(user_id=alice, title="after upgrade"))
        session.commit()
        assert [task.title for task in session.exec(select(Task))] == ["after upgrade"]


def run_alembic(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    """Run the alembic CLI from the repository root with DATABASE_URL set (or unset)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TODO_RLS_LOCK_TIMEOUT")
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(  # noqa: S603 (fixed executable and arguments)
        [str(ALEMBIC), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_alembic_cli_upgrades_and_downgrades_with_database_url(
    pg_server: PgServer, better_auth_database: str
) -> None:
    # The postgres:// form, as Neon and Heroku hand it out.
    url = pg_server.url(better_auth_database).set(drivername="postgres")
    database_url = url.render_as_string(hide_password=False)
    with pg_server.connect(better_auth_database, autocommit=True) as conn:
        upgraded = run_alembic("upgrade", "head", database_url=database_url)
        assert upgraded.returncode == 0, upgraded.stderr
        assert alembic_version(conn) == [head_revision()]
        assert {row[0] for row in snapshot(conn)["relations"]} == set(OUR_TABLES)

        downgraded = run_alembic("downgrade", "base", database_url=database_url)
        assert downgraded.returncode == 0, downgraded.stderr
        assert nothing_of_ours(conn)
        assert query_one(conn, "select pg_catalog.to_regclass('public.\"user\"')") is not None


def test_alembic_cli_without_database_url_fails_naming_it() -> None:
    result = run_alembic("upgrade", "head", database_url=None)
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr


def test_alembic_offline_mode_prints_the_sql_without_a_server() -> None:
    # Nothing listens on port 1: the SQL must come out without connecting.
    unreachable = "postgresql://nobody@127.0.0.1:1/unreachable"
    result = run_alembic("upgrade", "head", "--sql", database_url=unreachable)
    assert result.returncode == 0, result.stderr
    script = result.stdout.lower()
    assert "create policy" in script
    assert "force row level security" in script
    assert "create table public.task" in script


def test_migration_lock_timeout_fails_fast_and_applies_nothing(
    pg_server: PgServer, better_auth_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_server.url(better_auth_database).update_query_dict(STATEMENT_TIMEOUT)
    url_text = url.render_as_string(hide_password=False)

    # env.py reads TODO_RLS_LOCK_TIMEOUT on every run: a bad value fails this run...
    monkeypatch.setenv("TODO_RLS_LOCK_TIMEOUT", "not-a-duration")
    with pytest.raises(DBAPIError) as bad_value:
        migrate.upgrade(url_text)
    assert isinstance(bad_value.value.orig, psycopg.errors.InvalidParameterValue)

    # ...and the next run takes the new value, which the held lock makes observable.
    monkeypatch.setenv("TODO_RLS_LOCK_TIMEOUT", "500ms")
    with (
        pg_server.connect(better_auth_database, autocommit=True) as observer,
        pg_server.connect(
            better_auth_database, options="-c idle_in_transaction_session_timeout=60s"
        ) as blocker,
    ):
        blocker.execute('lock table public."user" in access exclusive mode')
        held = observer.execute(
            "select from pg_catalog.pg_locks where granted"
            " and relation = 'public.\"user\"'::regclass and mode = 'AccessExclusiveLock'"
        ).fetchall()
        assert len(held) == 1
        with pytest.raises(OperationalError) as timed_out:
            migrate.upgrade(url_text)
        assert isinstance(timed_out.value.orig, psycopg.errors.LockNotAvailable)
        assert not has_version_table(observer)
        assert nothing_of_ours(observer)

        blocker.rollback()  # the lock is gone: the same run now succeeds
        migrate.upgrade(url_text)
        assert alembic_version(observer) == [head_revision()]


MIGRATION_FILE_NAME = re.compile(r"^(\d{4}_\d{2}_\d{2}_\d{4})-[0-9a-f]+_\w+\.py$")


def test_migration_file_names_sort_in_revision_order() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    oldest_first = [Path(script.path).name for script in scripts.walk_revisions()][::-1]
    assert oldest_first, "no migrations found"
    for name in oldest_first:
        match = MIGRATION_FILE_NAME.match(name)
        assert match, f"{name} does not start with YYYY_MM_DD_HHMM-"
        datetime.strptime(match.group(1), "%Y_%m_%d_%H%M")  # a real date, not just digits
    assert sorted(oldest_first) == oldest_first
