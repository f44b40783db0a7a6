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
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from todo_rls import MigrationPreconditionError, Task, keys, migrate, scoped_session
from todo_rls.better_auth import BETTER_AUTH_USER_DDL

from catalog import OUR_TABLES, query_one, snapshot
from fix_db import APP_LOGIN, SIGNING_KEY, create_user
from fix_server import PgServer

# Downgrades and re-upgrades the schema: own copies of the template.
pytestmark = pytest.mark.own_database

REPO_ROOT = Path(__file__).resolve().parents[1]
# The alembic console script of the interpreter running the tests (.venv/bin/alembic).
ALEMBIC = Path(sys.executable).with_name("alembic")
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
               and pg_catalog.to_regnamespace('todo_rls') is null
               and not exists (select from pg_catalog.pg_policies where schemaname = 'public')
               and not exists (select from pg_catalog.pg_trigger t
                               join pg_catalog.pg_class c on c.oid = t.tgrelid
                               where c.relnamespace = 'public'::regnamespace
                                 and not t.tgisinternal)
            """,
        )
    )


def has_version_table(conn: psycopg.Connection[Any]) -> bool:
    """Whether our version table exists (a failed first upgrade must roll it back too)."""
    found = query_one(conn, "select pg_catalog.to_regclass('public.todo_rls_alembic_version')")
    return found is not None


def alembic_version(conn: psycopg.Connection[Any]) -> list[str]:
    """The revisions recorded in todo_rls_alembic_version (none if it does not exist)."""
    if not has_version_table(conn):
        return []
    rows = conn.execute("select version_num from public.todo_rls_alembic_version")
    return [row[0] for row in rows]


def app_role_exists(conn: psycopg.Connection[Any]) -> bool:
    """Whether the cluster still has role todo_app."""
    query = "select exists (select from pg_catalog.pg_roles where rolname = 'todo_app')"
    return bool(query_one(conn, query))


@pytest.fixture
def empty_database(pg_server: PgServer, migrated_server: Any) -> Iterator[str]:
    """A fresh empty database (no "user" table), dropped after the test. After migrated_server
    made role todo_app: on a new server another worker's first migration would otherwise
    create it in the middle of a test, and the test's snapshots (app_role) would differ."""
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


def test_upgrade_refuses_a_schema_public_open_to_public_and_writes_nothing(
    pg_server: PgServer, better_auth_database: str
) -> None:
    url = superuser_url(pg_server, better_auth_database)
    with pg_server.connect(better_auth_database, autocommit=True) as conn:
        # PostgreSQL 14's default ACL (and 15+'s after this grant): todo_app could then plant
        # functions in public.
        conn.execute("grant create on schema public to public")
        before = snapshot(conn)
        with pytest.raises(
            MigrationPreconditionError,
            match=r"PUBLIC holds CREATE there.* Run, as \S+ \(the schema's owner\): "
            r"revoke create on schema public from public;.* Nothing was changed",
        ):
            migrate.upgrade(url)
        assert not has_version_table(conn)
        assert nothing_of_ours(conn)
        assert snapshot(conn) == before
        # Positive control: the fix the error names is all it takes.
        conn.execute("revoke create on schema public from public")
        migrate.upgrade(url)
        assert alembic_version(conn) == [head_revision()]


def test_the_offline_script_refuses_a_schema_public_open_to_public_and_writes_nothing(
    pg_server: PgServer, better_auth_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the offline dialect's URL only
    upgrade = migrate.offline_sql("upgrade", "head")
    with pg_server.connect(better_auth_database, autocommit=True) as conn:
        conn.execute("grant create on schema public to public")
        before = snapshot(conn)
        with pytest.raises(
            psycopg.errors.RaiseException,
            match=r"PUBLIC holds CREATE there.* Run, as \S+ \(the schema's owner\): "
            r"revoke create on schema public from public;.* Nothing was changed",
        ):
            conn.execute(upgrade)  # one simple query, as psql sends a file: BEGIN ... COMMIT
        conn.execute("rollback")  # what the script's COMMIT does after the error, in psql
        assert not has_version_table(conn)
        assert nothing_of_ours(conn)
        assert snapshot(conn) == before
        # Positive control: the fix the error names is all it takes.
        conn.execute("revoke create on schema public from public")
        conn.execute(upgrade)
        assert alembic_version(conn) == [head_revision()]
        # The script that removes todo-rls is never refused for it.
        conn.execute("grant create on schema public to public")
        conn.execute(migrate.offline_sql("downgrade", f"{head_revision()}:base"))
        assert nothing_of_ours(conn)


def test_a_migrated_database_is_checked_again_and_downgrades_with_the_schema_open(
    pg_server: PgServer, better_auth_database: str
) -> None:
    url = superuser_url(pg_server, better_auth_database)
    migrate.upgrade(url)  # positive control: the closed schema passes
    with pg_server.connect(better_auth_database, autocommit=True) as conn:
        conn.execute("grant create on schema public to todo_app")
        with pytest.raises(
            MigrationPreconditionError,
            match=r"todo_app may create objects in schema public: .*"
            r"revoke create on schema public from todo_app;",
        ):
            migrate.upgrade(url)  # at head already: nothing to run, still checked
        assert alembic_version(conn) == [head_revision()]
        # Removing todo-rls is never refused for it.
        migrate.downgrade(url, "base")
        assert nothing_of_ours(conn)


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
    # The signing keys went with the downgrade (they live in schema todo_rls): install again.
    keys.add(admin, SIGNING_KEY)
    with scoped_session(app_engine, alice) as session:
        assert session.connection().exec_driver_sql("select current_user").scalar() == APP_LOGIN
        session.add(Task(user_id=alice, title="after upgrade"))
        session.commit()
        assert [task.title for task in session.exec(select(Task))] == ["after upgrade"]


# --- todo-rls 0.1 recorded its revisions in alembic_version: carried over, never re-run ----


def as_legacy(conn: psycopg.Connection[Any], *app_revisions: str) -> None:
    """Make conn's database look migrated by todo-rls 0.1: our revision in alembic_version
    (beside app_revisions, an app's chain that shared it), and no todo_rls_alembic_version."""
    ours = alembic_version(conn)
    conn.execute("create table public.alembic_version (version_num varchar(32) primary key)")
    for revision in (*ours, *app_revisions):
        conn.execute("insert into public.alembic_version values (%s)", (revision,))
    conn.execute("drop table public.todo_rls_alembic_version")


def legacy_versions(conn: psycopg.Connection[Any]) -> list[str] | None:
    """The rows of public.alembic_version, sorted; None when the table does not exist."""
    if query_one(conn, "select pg_catalog.to_regclass('public.alembic_version')") is None:
        return None
    return sorted(row[0] for row in conn.execute("select version_num from public.alembic_version"))


@pytest.mark.parametrize("app_revisions", [(), ("a1b2c3",)], ids=["ours-only", "shared"])
def test_a_database_versioned_in_alembic_version_moves_to_our_table_without_rerunning(
    pg_server: PgServer, dbname: str, admin: psycopg.Connection[Any], app_revisions: tuple[str]
) -> None:
    alice = create_user(admin)
    insert_owned_rows(admin, alice)
    original = snapshot(admin)
    as_legacy(admin, *app_revisions)
    assert legacy_versions(admin) == sorted([head_revision(), *app_revisions])  # control
    assert not has_version_table(admin)

    migrate.upgrade(superuser_url(pg_server, dbname))  # re-running 3f9c2a7d1b04 would fail

    assert alembic_version(admin) == [head_revision()]
    # The app's rows stay where its chain reads them; a table of ours alone is dropped.
    assert legacy_versions(admin) == (sorted(app_revisions) if app_revisions else None)
    assert snapshot(admin) == original
    assert query_one(admin, "select count(*) from task where user_id = %s", alice) == 1
    assert query_one(admin, "select count(*) from message where user_id = %s", alice) == 1


def test_a_legacy_database_behind_head_gets_only_the_missing_revisions(
    pg_server: PgServer, dbname: str, admin: psycopg.Connection[Any]
) -> None:
    alice = create_user(admin)
    insert_owned_rows(admin, alice)
    original = snapshot(admin)
    first = ScriptDirectory.from_config(migrate.alembic_config()).get_base()
    assert first is not None and first != head_revision()
    migrate.downgrade(superuser_url(pg_server, dbname), first)
    assert query_one(admin, "select pg_catalog.to_regclass('public.user_preference')") is None
    as_legacy(admin)
    assert legacy_versions(admin) == [first]

    migrate.upgrade(superuser_url(pg_server, dbname))

    assert alembic_version(admin) == [head_revision()] and legacy_versions(admin) is None
    assert snapshot(admin) == original  # the later revisions ran, and only they
    assert query_one(admin, "select count(*) from task where user_id = %s", alice) == 1


def test_an_apps_own_alembic_version_is_left_alone(
    pg_server: PgServer, better_auth_database: str
) -> None:
    with pg_server.connect(better_auth_database, autocommit=True) as conn:
        conn.execute("create table public.alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into public.alembic_version values ('a1b2c3')")

        migrate.upgrade(superuser_url(pg_server, better_auth_database))

        assert alembic_version(conn) == [head_revision()]
        assert legacy_versions(conn) == ["a1b2c3"]


def run_alembic(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    """Run the alembic CLI from the repository root with DATABASE_URL set (or unset)."""
    ignored = ("DATABASE_URL", "DATABASE_URL_DIRECT", "TODO_RLS_LOCK_TIMEOUT")
    env = {k: v for k, v in os.environ.items() if k not in ignored}
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


@pytest.mark.slow  # runs the alembic command in a subprocess
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


@pytest.mark.slow  # runs the alembic command in a subprocess
def test_alembic_cli_without_database_url_fails_naming_it() -> None:
    result = run_alembic("upgrade", "head", database_url=None)
    assert result.returncode != 0
    assert "export DATABASE_URL_DIRECT" in result.stderr and "DATABASE_URL is read" in result.stderr


@pytest.mark.slow  # runs the alembic command in a subprocess
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

    # env.py reads both waits on every run: a bad value fails this run, naming the variable...
    for variable in (migrate.LOCK_TIMEOUT_ENV, migrate.CLUSTER_WAIT_ENV):
        with monkeypatch.context() as bad:
            bad.setenv(variable, "not-a-duration")
            with pytest.raises(MigrationPreconditionError, match=f"^{variable}='not-a-duration'"):
                migrate.upgrade(url_text)
    with pg_server.connect(better_auth_database, autocommit=True) as observer:
        assert not has_version_table(observer)

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
