"""Row-level security holds for every owned table, command and kind of caller, as the app role.

The matrix is the shipped plugin's (todo_rls.testing.find_leaks), the one apps run on their own
tables: every command (by key, on the whole table, COPY, insert claiming someone else, upsert,
re-owning, rows pointing at another user's parent row) as every kind of caller (another user,
near misses of the owner's id, unset, empty, a reused connection, a forged or unsigned
context), each after its positive control. tests/test_policy_weakening.py shows it fails.
"""

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.testing import RowSpec, assert_owner_isolated

from fix_db import APP_LOGIN, SIGNING_KEY, AppConnector
from fix_world import OWNED_TABLES, World, acting, build_world, key_of


def _message_row(admin: psycopg.Connection[Any]) -> RowSpec:
    def row(owner: str) -> dict[str, Any]:
        # A fresh conversation of the owner's for each message, made as the superuser.
        found = admin.execute(
            "insert into conversation (user_id, title) values (%s, 'chat') returning id",
            (owner,),
        ).fetchone()
        assert found is not None
        return {"conversation_id": found[0], "role": "user", "content": "hi"}

    return row


# The owner's row of each owned table, given the superuser's connection (for parent rows).
ROWS: dict[str, Callable[[psycopg.Connection[Any]], RowSpec]] = {
    "task": lambda _: {"title": "a task"},
    "conversation": lambda _: {"title": "a chat"},
    "message": _message_row,
    "user_preference": lambda _: {"theme": "dark"},
}
# Owned, but append-only for todo_app (no UPDATE or DELETE grant, so the matrix's controls for
# those commands cannot pass): tests/test_audit.py covers its isolation.
APPEND_ONLY = {"audit_event"}


@pytest.mark.parametrize("table", ROWS)
def test_no_caller_but_the_owner_reaches_a_row(
    table: str, admin: psycopg.Connection[Any], app_url: str
) -> None:
    assert_owner_isolated(admin, app_url, table, ROWS[table](admin), signing_key=SIGNING_KEY)


def test_every_table_with_row_level_security_is_in_the_matrix(
    admin: psycopg.Connection[Any],
) -> None:
    protected = admin.execute(
        "select relname::text from pg_catalog.pg_class"
        " where relnamespace = 'public'::regnamespace and relrowsecurity"
    ).fetchall()
    assert {name for (name,) in protected} == set(ROWS) | APPEND_ONLY


@pytest.fixture
def world(admin: psycopg.Connection[Any]) -> World:
    return build_world(admin)


def test_the_owner_sees_exactly_their_rows_in_every_table(
    connect_app: AppConnector, world: World
) -> None:
    for actor, user in (("alice", world.alice), ("bob", world.bob)):
        with acting(connect_app, world, actor) as conn:
            for table in OWNED_TABLES:
                query = sql.SQL("select {}::text from {}").format(
                    sql.Identifier(key_of(table)), sql.Identifier(table)
                )
                ids = conn.execute(query).fetchall()
                assert [row[0] for row in ids] == [world.rows[table][user]]


@pytest.mark.parametrize("table", OWNED_TABLES)
def test_app_role_cannot_truncate(table: str, connect_app: AppConnector, world: World) -> None:
    with acting(connect_app, world, "alice") as conn:
        count = sql.SQL("select count(*) from {}").format(sql.Identifier(table))
        assert conn.execute(count).fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("truncate {}").format(sql.Identifier(table)))


def test_app_role_holds_only_row_privileges(connect_app: AppConnector) -> None:
    rows = (
        connect_app()
        .execute(
            """
        select c.relname, a.privilege_type
        from pg_class c, aclexplode(c.relacl) a
        where c.relnamespace = 'public'::regnamespace
          and a.grantee = 'todo_app'::regrole
        order by 1, 2
        """
        )
        .fetchall()
    )
    held: dict[str, set[str]] = {}
    for table, privilege in rows:
        held.setdefault(table, set()).add(privilege)
    # Ours hold the four row privileges; no table (ours, or one a later migration adds) holds
    # more than row privileges.
    row_privileges = {"DELETE", "INSERT", "SELECT", "UPDATE"}
    expected = dict.fromkeys(OWNED_TABLES, row_privileges)
    assert {table: held.get(table) for table in OWNED_TABLES} == expected
    assert all(privileges <= row_privileges for privileges in held.values()), rows


def test_app_role_cannot_change_policies_or_rls(connect_app: AppConnector, world: World) -> None:
    with acting(connect_app, world, "alice") as conn:
        assert conn.execute("select count(*) from task").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("alter table task disable row level security")


def test_app_role_is_not_privileged(connect_app: AppConnector) -> None:
    conn = connect_app()
    row = conn.execute(
        "select rolsuper, rolbypassrls from pg_roles where rolname = current_user"
    ).fetchone()
    assert conn.info.parameter_status("session_authorization") == APP_LOGIN
    assert row == (False, False)
    assert conn.execute("select pg_has_role('todo_app', 'MEMBER')").fetchone() == (True,)


@pytest.mark.parametrize("table", OWNED_TABLES)
def test_copy_from_into_a_protected_table_is_refused(
    table: str, connect_app: AppConnector, world: World
) -> None:
    copy_in = sql.SQL("copy {} (user_id) from stdin").format(sql.Identifier(table))
    with (
        acting(connect_app, world, "alice") as conn,
        pytest.raises(psycopg.errors.FeatureNotSupported),
        conn.cursor().copy(copy_in) as copy,
    ):
        copy.write_row((world.alice,))
