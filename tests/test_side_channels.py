"""Side channels: what a user can learn about rows that are not theirs, and what is closed.

Planner statistics: EXPLAIN's row estimates come from pg_statistic whatever the policies say, so
free-text columns keep none. Errors: through the DAL another user's id fails exactly like a
missing one, and no create function takes an id, so a unique violation cannot be provoked.
Counts cover only the user's own rows. Timing is documented in specs/threat-model.md, not timed.
"""

import inspect
import re
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlmodel import Session

from todo_rls import NotFoundError, chat, scoped_session, tasks

from dal_inspect import assert_app_role, statements_sent
from fix_db import AppConnector, create_user, scope_to

SECRET = "BOB MEDICAL: chemo appointment"
FREE_TEXT = [("task", "title"), ("task", "description"), ("conversation", "title"),
             ("message", "content")]  # fmt: skip


def estimated_rows(conn: psycopg.Connection[Any], table: str, column: str, value: str) -> int:
    query = sql.SQL("explain (format json) select * from {} where {} = %s").format(
        sql.Identifier(table), sql.Identifier(column)
    )
    row = conn.execute(query, (value,)).fetchone()
    assert row is not None
    return int(row[0][0]["Plan"]["Plan Rows"])


@pytest.fixture
def bob_with_a_common_secret(admin: psycopg.Connection[Any]) -> tuple[str, str]:
    """bob owns many rows carrying SECRET in every free-text column; statistics are fresh."""
    alice, bob = create_user(admin), create_user(admin)
    for _ in range(40):
        conversation = admin.execute(
            "insert into conversation (user_id, title) values (%s, %s) returning id", (bob, SECRET)
        ).fetchone()
        assert conversation is not None
        admin.execute(
            "insert into task (user_id, title, description) values (%s, %s, %s)",
            (bob, SECRET, SECRET),
        )
        admin.execute(
            "insert into message (user_id, conversation_id, role, content)"
            " values (%s, %s, 'user', %s)",
            (bob, conversation[0], SECRET),
        )
    # user_id keeps no statistics since revision 9a4c6e8b2d10 (ADR 0011); without them the
    # policies' own estimate makes every small estimate 1 row, and the comparisons below would
    # hold trivially. Here they are back, so the estimates carry the signal the control needs.
    for table in ("task", "conversation", "message"):
        admin.execute(f"alter table {table} alter column user_id set statistics -1")
    admin.execute("analyze task, conversation, message")
    return alice, bob


@pytest.mark.own_database  # gives user_id its statistics back
def test_row_estimates_do_not_reveal_other_users_text(
    bob_with_a_common_secret: tuple[str, str], connect_app: AppConnector
) -> None:
    alice, bob = bob_with_a_common_secret
    with connect_app() as conn, conn.transaction(force_rollback=True):
        scope_to(conn, alice)
        assert conn.execute("select count(*) from task").fetchone() == (0,)
        # Positive control: user_id keeps statistics, and the estimate does tell bob's id apart
        # from an unknown one, so this method would see a leak if one were there.
        assert estimated_rows(conn, "task", "user_id", bob) > 2 * estimated_rows(
            conn, "task", "user_id", "nobody"
        )
        for table, column in FREE_TEXT:
            assert estimated_rows(conn, table, column, SECRET) == estimated_rows(
                conn, table, column, "no such text"
            ), f"{table}.{column} estimates reveal a common value"


@pytest.mark.own_database  # gives user_id its statistics back
def test_free_text_columns_keep_no_statistics(
    bob_with_a_common_secret: tuple[str, str], admin: psycopg.Connection[Any]
) -> None:
    kept = admin.execute(
        """
        select c.relname::text, a.attname::text
        from pg_statistic s
        join pg_class c on c.oid = s.starelid
        join pg_attribute a on a.attrelid = s.starelid and a.attnum = s.staattnum
        where c.relname in ('task', 'conversation', 'message')
        """
    ).fetchall()
    assert ("task", "user_id") in kept  # positive control: ANALYZE did run
    assert not set(FREE_TEXT) & set(kept)


# --- errors: what a caller learns from a refusal --------------------------------------------

ById = Callable[[Session, uuid.UUID], object]
BY_ID: dict[str, tuple[str, ById]] = {
    "get task": ("task", tasks.get),
    "update task": ("task", lambda s, i: tasks.update(s, i, title="mine now", description=None)),
    "toggle task": ("task", tasks.toggle),
    "delete task": ("task", tasks.delete),
    "get conversation": ("conversation", chat.get_conversation),
    "rename conversation": ("conversation", lambda s, i: chat.rename_conversation(s, i, "mine")),
    "delete conversation": ("conversation", chat.delete_conversation),
    "add message": ("conversation", lambda s, i: chat.add_message(s, i, "user", "planted")),
    "list messages": ("conversation", chat.list_messages),
}


def rows_of(admin: psycopg.Connection[Any], user: str) -> list[list[tuple[Any, ...]]]:
    """Every row user owns, every column (updated_at too), as the superuser sees them."""
    return [
        admin.execute(
            sql.SQL("select * from {} where user_id = %s order by id").format(sql.Identifier(t)),
            (user,),
        ).fetchall()
        for t in ("task", "conversation", "message")
    ]


@pytest.fixture
def bobs_rows(app_engine: Engine, bob: str) -> dict[str, uuid.UUID]:
    """bob's task and conversation (holding one message), committed through the DAL."""
    with scoped_session(app_engine, bob) as session:
        task = tasks.create(session, "bob's task")
        conversation = chat.create_conversation(session, "bob's chat")
        assert task.id is not None and conversation.id is not None
        chat.add_message(session, conversation.id, "user", "bob's message")
        session.commit()
        return {"task": task.id, "conversation": conversation.id}


@pytest.mark.parametrize("operation", BY_ID)
def test_another_users_id_fails_exactly_like_a_missing_id(
    app_engine: Engine,
    admin: psycopg.Connection[Any],
    alice: str,
    bob: str,
    bobs_rows: dict[str, uuid.UUID],
    operation: str,
) -> None:
    table, act = BY_ID[operation]
    bobs, missing = bobs_rows[table], uuid.uuid4()
    with scoped_session(app_engine, bob) as session:  # positive control: the owner can do it
        act(session, bobs)
        session.rollback()
    before = rows_of(admin, bob)
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        with pytest.raises(NotFoundError) as hidden:
            act(session, bobs)
        with pytest.raises(NotFoundError) as absent:
            act(session, missing)
        session.commit()  # would keep anything the refused call wrote
    # Same class, same words but for the id, no chained database error to read details from.
    assert type(hidden.value) is type(absent.value) is NotFoundError
    assert str(hidden.value).replace(str(bobs), "<id>") == f"{table} <id> not found"
    assert str(absent.value).replace(str(missing), "<id>") == f"{table} <id> not found"
    assert hidden.value.__context__ is None and absent.value.__context__ is None
    assert rows_of(admin, bob) == before  # not even updated_at moved
    assert rows_of(admin, alice) == [[], [], []]


# --- unique violations: ids chosen by the caller -------------------------------------------

CREATORS: dict[str, Callable[..., object]] = {
    "tasks.create": tasks.create,
    "chat.create_conversation": chat.create_conversation,
    "chat.add_message": chat.add_message,
}


@pytest.mark.parametrize("creator", CREATORS)
def test_dal_creators_take_no_id_or_owner_from_the_caller(creator: str) -> None:
    parameters = inspect.signature(CREATORS[creator]).parameters.values()
    names = {p.name for p in parameters}
    assert names.isdisjoint({"id", "user_id", "task_id", "message_id"}), names
    flexible = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
    assert not any(p.kind in flexible for p in parameters)  # no **kwargs to smuggle one in


def test_dal_inserts_let_the_server_choose_every_id(app_engine: Engine, alice: str) -> None:
    created: list[uuid.UUID | None] = []

    def create_everything(session: Session) -> None:
        task = tasks.create(session, "t")
        conversation = chat.create_conversation(session, "c")
        assert conversation.id is not None
        message = chat.add_message(session, conversation.id, "user", "m")
        created.extend([task.id, conversation.id, message.id])

    with scoped_session(app_engine, alice) as session:
        sent = statements_sent(session, create_everything)
    inserts = [(statement, parameters) for statement, parameters in sent if "INSERT" in statement]
    assert len(inserts) == 3  # positive control: the three INSERTs were seen
    for statement, parameters in inserts:
        columns = re.search(r"INSERT INTO \w+ \(([^)]*)\)", statement)
        assert columns is not None, statement
        assert "id" not in [c.strip() for c in columns.group(1).split(",")], statement
        assert "id" not in parameters, statement
    assert all(isinstance(row_id, uuid.UUID) for row_id in created)


def test_explicit_id_of_another_users_row_reveals_nothing(
    app_engine: Engine, alice: str, bobs_rows: dict[str, uuid.UUID], connect_app: AppConnector
) -> None:
    """Every primary key is (user_id, id): a chosen id collides only with the chooser's rows."""
    insert = "insert into task (id, user_id, title) values (%s, %s, 'probe')"
    with connect_app() as conn, conn.transaction(force_rollback=True):
        scope_to(conn, alice)
        assert conn.execute("select count(*) from task").fetchone() == (0,)  # bob's is hidden
        own = uuid.uuid4()
        conn.execute(insert, (own, alice))
        # Control: the key still refuses a duplicate within one user (23505).
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(insert, (own, alice))
        conn.execute(insert, (bobs_rows["task"], alice))  # bob's id: no 23505, a row of alice's
        assert conn.execute("select count(*) from task").fetchone() == (2,)


# --- counts ---------------------------------------------------------------------------------


def test_counts_include_only_the_users_own_rows(
    app_engine: Engine, alice: str, bob: str, bobs_rows: dict[str, uuid.UUID]
) -> None:
    with scoped_session(app_engine, bob) as session:  # positive control: bob counts his own
        assert tasks.count_open(session) == 1
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        tasks.create(session, "open")
        tasks.toggle(session, tasks.create(session, "done").id)  # type: ignore[arg-type]
        assert tasks.count_open(session) == 1
        counts = session.connection().exec_driver_sql(
            "select (select count(*) from task), (select count(*) from conversation),"
            " (select count(*) from message)"
        )
        assert counts.one() == (2, 0, 0)  # no WHERE: RLS alone keeps bob's rows out
    with Session(app_engine) as unscoped:
        assert unscoped.connection().exec_driver_sql("select count(*) from task").one() == (0,)
