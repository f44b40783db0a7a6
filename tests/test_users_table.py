"""TODO_RLS_USERS_TABLE: the foreign keys reference another users table (Neon Auth keeps its
users in schema neon_auth), keep their names, and isolation holds as before.

The stand-in is shaped like Neon Auth's neon_auth.users_sync (text id; RLS-FACTS has no DDL of
it, so only the columns the migrations rely on are modelled, plus a few of its own).
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

import todo_rls
from todo_rls import UnknownUserError, migrate, scoped_session, tasks
from todo_rls.cli import main
from todo_rls.users_table import DEFAULT, UsersTable, UsersTableError, parse

from catalog import snapshot
from fix_db import APP_LOGIN, new_user_id, url_as
from fix_server import PgServer

STAND_IN = """
create schema neon_auth;
create table neon_auth.users_sync (
  raw_json jsonb not null default '{}',
  id text not null primary key,
  name text,
  email text,
  created_at timestamptz,
  updated_at timestamptz,
  deleted_at timestamptz
);
"""
FOREIGN_KEYS = """
select conrelid::regclass::text, conname::text, confrelid::regclass::text
from pg_catalog.pg_constraint
where contype = 'f' and confrelid = any(array[
  pg_catalog.to_regclass('neon_auth.users_sync'), pg_catalog.to_regclass('public."user"')])
order by 1, 2
"""


@pytest.mark.parametrize(
    ("setting", "expected", "sql"),
    [
        ("neon_auth.users_sync", UsersTable("neon_auth", "users_sync"), "neon_auth.users_sync"),
        ('neon_auth."user"', UsersTable("neon_auth", "user"), 'neon_auth."user"'),
        ('"user"', DEFAULT, 'public."user"'),
        ("Accounts.People", UsersTable("accounts", "people"), "accounts.people"),
        ('app."People"', UsersTable("app", "People"), 'app."People"'),
    ],
)
def test_a_setting_names_a_schema_qualified_table(
    setting: str, expected: UsersTable, sql: str
) -> None:
    assert parse(setting) == expected
    assert expected.sql == sql


@pytest.mark.parametrize(
    "setting", ["a.b.c", "neon_auth.users; drop table task", "1users", 'a."b"c', '"a""b"', "."]
)
def test_a_setting_that_is_no_table_name_is_refused_naming_the_forms(setting: str) -> None:
    with pytest.raises(UsersTableError, match=r"TODO_RLS_USERS_TABLE=.*schema\.table or table"):
        parse(setting)


@pytest.fixture
def neon_auth_db(
    pg_server: PgServer, migrated_server: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database with the stand-in and no public."user", TODO_RLS_USERS_TABLE set."""
    monkeypatch.setenv("TODO_RLS_USERS_TABLE", "neon_auth.users_sync")
    with pg_server.scratch_database() as name:
        with pg_server.connect(name, autocommit=True) as conn:
            conn.execute(STAND_IN)
        yield name


def add_user(conn: psycopg.Connection[Any]) -> str:
    user_id = new_user_id()
    conn.execute("insert into neon_auth.users_sync (id, name) values (%s, 'someone')", (user_id,))
    return user_id


def test_migrations_reference_the_configured_table_under_the_same_key_names(
    pg_server: PgServer, neon_auth_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = pg_server.url(neon_auth_db).render_as_string(hide_password=False)
    assert main(["migrate", "--url", url]) == 0
    assert main(["keys", "add", "--url", url]) == 0  # $TODO_RLS_SIGNING_KEY: fix_db's
    with pg_server.connect(neon_auth_db, autocommit=True) as conn:
        assert conn.execute("select pg_catalog.to_regclass('public.\"user\"')").fetchone() == (
            None,
        )
        assert conn.execute(FOREIGN_KEYS).fetchall() == [
            ("audit_event", "fk_audit_event_user_id_user", "neon_auth.users_sync"),
            ("conversation", "fk_conversation_user_id_user", "neon_auth.users_sync"),
            ("task", "fk_task_user_id_user", "neon_auth.users_sync"),
            ("user_preference", "fk_user_preference_user_id_user", "neon_auth.users_sync"),
        ]
    capsys.readouterr()
    assert main(["check", "--url", url, "--login-role", APP_LOGIN]) == 0, capsys.readouterr()


def test_isolation_holds_with_the_configured_users_table(
    pg_server: PgServer, neon_auth_db: str
) -> None:
    url = pg_server.url(neon_auth_db).render_as_string(hide_password=False)
    assert main(["migrate", "--url", url]) == 0
    assert main(["keys", "add", "--url", url]) == 0  # $TODO_RLS_SIGNING_KEY: fix_db's
    with pg_server.connect(neon_auth_db, autocommit=True) as admin:
        alice, bob = add_user(admin), add_user(admin)
        engine = todo_rls.create_engine(url_as(pg_server, neon_auth_db, APP_LOGIN))
        try:
            with scoped_session(engine, alice) as session:
                facts = session.execute(
                    text("select current_user::text, row_security_active('public.task')")
                ).one()
                assert tuple(facts) == (APP_LOGIN, True)
                task = tasks.create(session, "hers")
                session.commit()
                assert [t.id for t in tasks.list_page(session).items] == [task.id]  # control
            with scoped_session(engine, bob) as session:
                assert tasks.list_page(session).items == []
                updated = session.execute(
                    text("update task set title = 'his' where id = :id returning id"),
                    {"id": task.id},
                )
                assert updated.all() == []
                session.commit()
            # A user the configured table does not have: the same error as with Better Auth's.
            with (
                pytest.raises(UnknownUserError),
                scoped_session(engine, new_user_id()) as session,
            ):
                tasks.create(session, "nobody's")
        finally:
            engine.dispose()
        # Deleting the user in the configured table takes their rows, as Better Auth's would.
        admin.execute("delete from neon_auth.users_sync where id = %s", (alice,))
        assert admin.execute("select count(*) from task").fetchone() == (0,)


def test_a_later_run_with_another_users_table_is_refused_and_changes_nothing(
    pg_server: PgServer, neon_auth_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_server.url(neon_auth_db).render_as_string(hide_password=False)
    assert main(["migrate", "--url", url]) == 0
    monkeypatch.delenv("TODO_RLS_USERS_TABLE")  # forgotten on the next deploy
    with pg_server.connect(neon_auth_db, autocommit=True) as conn:
        conn.execute('create table public."user" (id text primary key)')
        before = snapshot(conn)
        with pytest.raises(todo_rls.MigrationPreconditionError) as refused:
            migrate.downgrade(url, "base")
        assert "set TODO_RLS_USERS_TABLE=neon_auth.users_sync" in str(refused.value)
        assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("neon_auth.missing", "table neon_auth.missing does not exist"),
        ("neon_auth.no_text_id", "neon_auth.no_text_id.id is missing or is not of type text"),
    ],
)
def test_a_configured_table_that_cannot_be_referenced_stops_the_migration(
    setting: str,
    message: str,
    pg_server: PgServer,
    neon_auth_db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TODO_RLS_USERS_TABLE", setting)
    url = pg_server.url(neon_auth_db).render_as_string(hide_password=False)
    with pg_server.connect(neon_auth_db, autocommit=True) as conn:
        conn.execute("create table neon_auth.no_text_id (id uuid primary key)")
        before = snapshot(conn)
        assert main(["migrate", "--url", url]) == 2
        assert message in capsys.readouterr().err
        assert snapshot(conn) == before
        assert conn.execute("select pg_catalog.to_regclass('public.task')").fetchone() == (None,)
