"""Schema promises no other module proves, each checked as the application role."""

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlmodel import select

from todo_rls import Task, scoped_session, tasks

from dal_inspect import plan_of
from fix_db import APP_LOGIN, AppConnector, create_user, scope_to
from fix_world import OWNED_TABLES, TABLES, World, acting, build_world, insert_statement, key_of

OLD = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def world(admin: psycopg.Connection[Any]) -> World:
    """alice and bob, each with one task, conversation and message (arranged as superuser)."""
    return build_world(admin)


def count(conn: psycopg.Connection[Any], table: str) -> int:
    """count(*) of table, as the connection's role and scope see it."""
    row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def counts(connect: AppConnector, world: World, actor: str) -> dict[str, int]:
    """How many rows of each table actor sees, as the app role scoped as actor."""
    with acting(connect, world, actor) as conn:
        return {table: count(conn, table) for table in OWNED_TABLES}


def new_row(world: World, table: str) -> dict[str, Any]:
    """Columns of a new row of alice's in table (a message goes into her conversation)."""
    if table == "message":
        conversation = world.rows["conversation"][world.alice]
        return {
            "user_id": world.alice,
            "conversation_id": conversation,
            "role": "user",
            "content": "new",
        }
    return {"user_id": world.alice, "title": "new"}


def fetch_one(
    conn: psycopg.Connection[Any], query: str | sql.SQL | sql.Composed, params: Any = None
) -> Any:
    """The one row query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


# --- cascades ------------------------------------------------------------------------------


def test_deleting_a_user_deletes_their_tasks_conversations_and_messages(
    world: World, admin: psycopg.Connection[Any], connect_app: AppConnector
) -> None:
    everything_once = dict.fromkeys(OWNED_TABLES, 1)
    assert counts(connect_app, world, "alice") == everything_once  # positive control
    assert counts(connect_app, world, "bob") == everything_once
    # The app role has no privilege on "user"; Better Auth deletes users with its own role.
    admin.execute('delete from "user" where id = %s', (world.alice,))
    assert counts(connect_app, world, "alice") == dict.fromkeys(OWNED_TABLES, 0)
    assert counts(connect_app, world, "bob") == everything_once


# --- the updated_at trigger ----------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_updated_at_is_set_on_every_update_even_when_the_update_sets_it(
    table: str, world: World, connect_app: AppConnector
) -> None:
    values = new_row(world, table) | {"created_at": OLD, "updated_at": OLD}
    stamps = sql.SQL("created_at, updated_at, now()")
    table_id = sql.Identifier(table)
    with acting(connect_app, world, "alice") as conn:
        # Positive control: an INSERT keeps explicit timestamps (the trigger is UPDATE-only).
        row_id, created, updated = fetch_one(
            conn, insert_statement(table, values, returning="id, created_at, updated_at"), values
        )
        assert (created, updated) == (OLD, OLD)
        touch = sql.SQL("update {} set user_id = user_id where id = %s returning {}")
        created, updated, now = fetch_one(conn, touch.format(table_id, stamps), (row_id,))
        assert (created, updated) == (OLD, now)
        explicit = sql.SQL("update {} set updated_at = %s where id = %s returning {}")
        created, updated, now = fetch_one(conn, explicit.format(table_id, stamps), (OLD, row_id))
        assert (created, updated) == (OLD, now)


# --- check constraints ---------------------------------------------------------------------

# table -> (column, values the schema accepts, refused value -> the constraint that refuses it)
CHECKS: dict[str, tuple[str, list[str | None], dict[str, str]]] = {
    "task": (
        "title",
        ["x", "x" * 200, " padded "],
        {"": "ck_task_title_length", " \t ": "ck_task_title_not_blank"}
        | {"x" * 201: "ck_task_title_length"},
    ),
    "conversation": (
        "title",
        [None, "x", "x" * 200],
        dict.fromkeys(["", "   ", "x" * 201], "ck_conversation_title_valid"),
    ),
    "message": (
        "role",
        ["user", "assistant", "system", "tool"],
        dict.fromkeys(["", "robot", "User"], "ck_message_role_known"),
    ),
}


@pytest.mark.parametrize("table", TABLES)
def test_titles_and_message_roles_outside_the_rules_are_refused(
    table: str, world: World, connect_app: AppConnector
) -> None:
    column, accepted, refused = CHECKS[table]
    update = sql.SQL("update {} set {} = %s where id = %s").format(
        sql.Identifier(table), sql.Identifier(column)
    )
    with acting(connect_app, world, "alice") as conn:
        for value in accepted:  # positive control: the rule's edge values go in
            values = new_row(world, table) | {column: value}
            fetch_one(conn, insert_statement(table, values, returning="id"), values)
        for value, constraint in refused.items():
            values = new_row(world, table) | {column: value}
            with pytest.raises(psycopg.errors.CheckViolation) as inserting, conn.transaction():
                conn.execute(insert_statement(table, values, returning="id"), values)
            with pytest.raises(psycopg.errors.CheckViolation) as updating, conn.transaction():
                conn.execute(update, (value, world.rows[table][world.alice]))
            assert inserting.value.diag.constraint_name == constraint, repr(value)
            assert updating.value.diag.constraint_name == constraint, repr(value)


# --- privileges ----------------------------------------------------------------------------

TABLE_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
HELD = "select array(select p from unnest(%s::text[]) p where has_table_privilege(%s, p))"


def test_app_role_has_no_privilege_on_the_user_table(
    world: World, connect_app: AppConnector
) -> None:
    with acting(connect_app, world, "alice") as conn:
        # Positive control: the same check finds the role's grants on its own tables.
        assert count(conn, "task") == 1
        assert fetch_one(conn, HELD, (TABLE_PRIVILEGES, "public.task")) == (
            ["SELECT", "INSERT", "UPDATE", "DELETE"],
        )
        assert fetch_one(conn, HELD, (TABLE_PRIVILEGES, 'public."user"')) == ([],)
        for statement in (
            'select id from public."user"',
            'insert into public."user" (id, name, email, "emailVerified")'
            " values ('x', 'x', 'x@example.test', true)",
            'update public."user" set name = name',
            'delete from public."user"',
            'truncate public."user"',
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)


def test_app_role_cannot_create_objects_in_schema_public(connect_app: AppConnector) -> None:
    # On PostgreSQL 14 too: the migrations refuse a schema PUBLIC may create in
    # (tests/test_migrations.py::test_migration_refuses_a_schema_open_to_public).
    conn = connect_app()
    with conn.transaction(force_rollback=True):
        assert fetch_one(conn, "select current_user::text") == (APP_LOGIN,)
        # Positive control: the role can create where it may (its temporary schema).
        conn.execute("create temporary table scratch (id int)")
        privileges = (
            "select has_schema_privilege('public', 'USAGE'),"
            " has_schema_privilege('public', 'CREATE')"
        )
        assert fetch_one(conn, privileges) == (True, False)
        for statement in (
            "create table public.todo_rls_scratch (id int)",
            "create view public.todo_rls_scratch as select 1 as one",
            "create function public.todo_rls_scratch() returns int language sql as 'select 1'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)


def test_todo_app_is_not_superuser_and_has_no_bypassrls(connect_app: AppConnector) -> None:
    conn = connect_app()
    assert fetch_one(conn, "select pg_has_role('todo_app', 'MEMBER')") == (True,)
    row = fetch_one(
        conn, "select rolsuper, rolbypassrls, rolcanlogin from pg_roles where rolname = 'todo_app'"
    )
    assert row == (False, False, False)


# --- forced row-level security and the policies --------------------------------------------


@pytest.mark.own_database  # hands the tables to another owner and counts every row
def test_table_owner_sees_no_rows_because_rls_is_forced(
    world: World, table_owner: str, connect_app: AppConnector
) -> None:
    with connect_app(role=table_owner) as conn:
        state = "select current_user::text, row_security_active('task')"
        with conn.transaction(force_rollback=True):
            assert fetch_one(conn, state) == (table_owner, True)
            # Positive control: without FORCE the owner reads every row, so FORCE hides them.
            for table in OWNED_TABLES:
                conn.execute(
                    sql.SQL("alter table {} no force row level security").format(
                        sql.Identifier(table)
                    )
                )
            assert {table: count(conn, table) for table in OWNED_TABLES} == dict.fromkeys(
                OWNED_TABLES, 2
            )
        with conn.transaction(force_rollback=True):
            assert fetch_one(conn, state) == (table_owner, True)
            assert {table: count(conn, table) for table in OWNED_TABLES} == dict.fromkeys(
                OWNED_TABLES, 0
            )
            # Scoping does not help either: no policy names the owner.
            scope_to(conn, world.alice)
            assert {table: count(conn, table) for table in OWNED_TABLES} == dict.fromkeys(
                OWNED_TABLES, 0
            )


def test_every_protected_table_forces_rls_with_one_policy_per_command_for_todo_app(
    connect_app: AppConnector,
) -> None:
    conn = connect_app()
    # Protected means: carries an owner. Every table in public with a user_id column.
    tables = conn.execute(
        """
        select c.relname::text, c.relrowsecurity, c.relforcerowsecurity
        from pg_class c join pg_attribute a on a.attrelid = c.oid
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
          and a.attname = 'user_id' and not a.attisdropped
        order by 1
        """
    ).fetchall()
    # Every one of them (the core tables and any a later migration adds), forced.
    assert set(OWNED_TABLES) <= {table for table, _, _ in tables}  # positive control
    assert tables == [(table, True, True) for table, _, _ in tables]
    policies = conn.execute(
        """
        select tablename::text, policyname::text, cmd, permissive, roles::text[],
               qual, with_check
        from pg_policies where schemaname = 'public' order by 1, 2
        """
    ).fetchall()
    expected = [
        (table, f"{table}_{cmd.lower()}", cmd, "PERMISSIVE", ["todo_app"])
        for table, _, _ in tables
        for cmd in sorted(["SELECT", "INSERT", "UPDATE", "DELETE"], key=str.lower)
    ]
    assert [row[:5] for row in policies] == expected
    # USING where a row is reached, WITH CHECK where one is written; one expression for all.
    assert [(row[5] is not None, row[6] is not None) for row in policies] == [
        {"DELETE": (True, False), "INSERT": (False, True), "SELECT": (True, False)}.get(
            row[2], (True, True)
        )
        for row in policies
    ]
    expressions = {expression for row in policies for expression in row[5:] if expression}
    assert len(expressions) == 1, expressions
    (expression,) = expressions
    assert re.fullmatch(
        r"\(user_id = \( SELECT todo_rls\.current_user_id\(\) AS current_user_id\)\)",
        expression,
    ), expression


@pytest.mark.parametrize("table", OWNED_TABLES)
def test_turning_row_security_off_raises_instead_of_showing_rows(
    table: str, world: World, connect_app: AppConnector
) -> None:
    with acting(connect_app, world, "alice") as conn:
        assert count(conn, table) == 1  # positive control: alice sees her own row
        conn.execute("select set_config('row_security', 'off', true)")
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege,
            match="query would be affected by row-level security policy",
        ):
            count(conn, table)


@pytest.mark.parametrize("table", OWNED_TABLES)
def test_filtering_on_another_user_in_a_scoped_transaction_returns_nothing(
    table: str, world: World, connect_app: AppConnector
) -> None:
    query = sql.SQL("select {}::text from {} where user_id = %s").format(
        sql.Identifier(key_of(table)), sql.Identifier(table)
    )
    with acting(connect_app, world, "bob") as conn:  # positive control: bob finds his row
        assert conn.execute(query, (world.bob,)).fetchall() == [(world.rows[table][world.bob],)]
    with acting(connect_app, world, "alice") as conn:
        assert conn.execute(query, (world.bob,)).fetchall() == []


def test_message_into_another_users_conversation_fails_like_one_into_a_missing_conversation(
    world: World, connect_app: AppConnector
) -> None:
    def refusal(conn: psycopg.Connection[Any], conversation_id: str) -> psycopg.Error:
        values = new_row(world, "message") | {"conversation_id": conversation_id}
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as error, conn.transaction():
            conn.execute(insert_statement("message", values, returning="id"), values)
        return error.value

    bobs, missing = world.rows["conversation"][world.bob], str(uuid.uuid4())
    with acting(connect_app, world, "bob") as conn:  # bob's conversation exists
        assert count(conn, "conversation") == 1
    with acting(connect_app, world, "alice") as conn:
        values = new_row(world, "message")  # positive control: her own conversation takes it
        fetch_one(conn, insert_statement("message", values, returning="id"), values)
        other, absent = refusal(conn, bobs), refusal(conn, missing)
    assert other.sqlstate == absent.sqlstate == "23503"
    assert other.diag.message_primary == absent.diag.message_primary
    constraint = "fk_message_conversation_id_user_id_conversation"
    assert other.diag.constraint_name == absent.diag.constraint_name == constraint
    # RLS on conversation makes PostgreSQL leave the key values out of the detail, so the two
    # errors are identical word for word: the FK is no existence oracle.
    assert other.diag.message_detail == 'Key is not present in table "conversation".'
    assert str(other) == str(absent)


# --- plans ---------------------------------------------------------------------------------


# Its own database: the plan depends on VACUUM setting the visibility map, which any open
# transaction in the same database keeps it from doing, and on the table's size and statistics
# (an ANALYZE in another test's rolled-back transaction still leaves its page and row counts).
# On the shared database it chose a plain Index Scan once in a full run.
@pytest.mark.own_database
def test_open_task_count_is_an_index_only_scan(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        for title in ("a", "b", "c"):
            tasks.create(session, title)
        session.commit()
    admin.execute("vacuum (analyze) public.task")  # sets the visibility map, as autovacuum would
    with scoped_session(app_engine, alice) as session:
        assert tasks.count_open(session) == 3  # positive control: the count counts
        plan = plan_of(session, tasks.count_open)
    assert "Index Only Scan using ix_task_user_id_completed_created_at_id" in plan, plan


@pytest.mark.parametrize("table", OWNED_TABLES)
def test_policy_reads_the_user_once_per_statement_as_an_initplan(
    table: str, world: World, connect_app: AppConnector
) -> None:
    with acting(connect_app, world, "alice") as conn:

        def plan(query: sql.Composable) -> str:
            rows = conn.execute(sql.SQL("explain ") + query).fetchall()
            return "\n".join(row[0] for row in rows)

        # Positive control: a bare call of the verifier in a condition shows up in the plan.
        bare = sql.SQL("select {} from {} where user_id = todo_rls.current_user_id()")
        key, name = sql.Identifier(key_of(table)), sql.Identifier(table)
        assert "current_user_id" in plan(bare.format(key, name))
        policy_only = plan(sql.SQL("select {} from {}").format(key, name))
    assert "InitPlan" in policy_only and "current_user_id" not in policy_only, policy_only


def test_user_id_with_quotes_backslashes_and_non_ascii_is_scoped_exactly(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    odd = create_user(admin, 'o\'brien \\ "q" $$ %s ünïcødé 漢字 🙂')
    with scoped_session(app_engine, odd) as session:
        scope = session.connection().exec_driver_sql("select current_setting('app.user_id')")
        assert scope.scalar() == odd
        session.add(Task(user_id=odd, title="odd"))  # WITH CHECK: user_id equals the scope
        session.commit()
        assert [task.user_id for task in session.exec(select(Task))] == [odd]
    with scoped_session(app_engine, alice) as session:
        assert session.exec(select(Task)).all() == []
