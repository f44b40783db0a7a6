"""Every statement of the data-access layer routes to one shard on Citus: its EXPLAIN, run as
the scoped user through the coordinator, shows one task.

Citus routes only from an explicit `user_id = ...` in the statement (the policies alone fan out
to every shard, measured in docs/citus.md); the DAL adds it to every statement. A statement
that lost it would show one task per shard, which the control below makes sure is noticed.
"""

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlmodel import Session

import todo_rls
from todo_rls import EngineSettings, chat, preferences, scoped_session, tasks

from fix_citus import CitusApp
from fix_db import create_user

pytestmark = pytest.mark.citus

TASK_COUNT = re.compile(r"Task Count: (\d+)")


@pytest.fixture(scope="module")
def engine(citus_app: CitusApp) -> Iterator[Engine]:
    engine = todo_rls.create_engine(citus_app.url(), EngineSettings(pool_size=1, max_overflow=0))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def alice(citus_app: CitusApp, engine: Engine) -> dict[str, Any]:
    """A user with two tasks, a conversation with two messages, and preferences; their ids."""
    with citus_app.admin() as admin:
        user_id = create_user(admin)
    with scoped_session(engine, user_id) as session:
        first, second = tasks.create(session, "one"), tasks.create(session, "two")
        conversation = chat.create_conversation(session, "chat")
        for content in ("hi", "there"):
            chat.add_message(session, str(conversation.id), "user", content)
        preferences.update(session, theme="dark")
        session.commit()
        task_page = tasks.list_page(session, limit=1)
        message_page = chat.list_messages(session, str(conversation.id), limit=1)
        return {
            "user_id": user_id,
            "task": str(first.id),
            "other_task": str(second.id),
            "conversation": str(conversation.id),
            "task_cursor": task_page.next_cursor,
            "message_cursor": message_page.next_cursor,
        }


Pattern = Callable[[Session, dict[str, Any]], object]
PATTERNS: dict[str, Pattern] = {
    "tasks.create": lambda s, a: tasks.create(s, "new"),
    "tasks.get": lambda s, a: tasks.get(s, a["task"]),
    "tasks.list_page": lambda s, a: tasks.list_page(s),
    "tasks.list_page after a cursor": lambda s, a: tasks.list_page(s, after=a["task_cursor"]),
    "tasks.list_page completed": lambda s, a: tasks.list_page(s, completed=False),
    "tasks.update": lambda s, a: tasks.update(s, a["task"], title="renamed"),
    "tasks.toggle": lambda s, a: tasks.toggle(s, a["task"]),
    "tasks.delete": lambda s, a: tasks.delete(s, a["other_task"]),
    "tasks.count_open": lambda s, a: tasks.count_open(s),
    "chat.create_conversation": lambda s, a: chat.create_conversation(s, "new"),
    "chat.get_conversation": lambda s, a: chat.get_conversation(s, a["conversation"]),
    "chat.list_conversations": lambda s, a: chat.list_conversations(s),
    "chat.rename_conversation": lambda s, a: chat.rename_conversation(s, a["conversation"], "x"),
    "chat.add_message": lambda s, a: chat.add_message(s, a["conversation"], "user", "more"),
    "chat.list_messages": lambda s, a: chat.list_messages(s, a["conversation"]),
    "chat.list_messages after a cursor": lambda s, a: chat.list_messages(
        s, a["conversation"], after=a["message_cursor"]
    ),
    "chat.delete_conversation": lambda s, a: chat.delete_conversation(s, a["conversation"]),
    "preferences.get": lambda s, a: preferences.get(s),
    "preferences.update": lambda s, a: preferences.update(s, theme="light"),
    "preferences.reset": lambda s, a: preferences.reset(s),
}


def statements_of(engine: Engine, session: Session, run: Callable[[], object]) -> list[Any]:
    """The (SQL, parameters) of every statement run() sends through engine."""
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:  # conn, cursor, statement, parameters, context, many
        sent.append((args[2], args[3]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sent


def task_counts(session: Session, statement: str, parameters: Any) -> list[int]:
    """The Task Count of each distributed step in the coordinator's plan of statement."""
    plan = session.connection().exec_driver_sql(f"explain {statement}", parameters)
    return [int(count) for count in TASK_COUNT.findall("\n".join(row[0] for row in plan))]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_dal_statement_runs_on_one_shard(
    engine: Engine, alice: dict[str, Any], pattern: str
) -> None:
    with scoped_session(engine, alice["user_id"]) as session:
        sent = statements_of(engine, session, lambda: PATTERNS[pattern](session, alice))
        session.rollback()  # the plans are read in a transaction of their own, as sent
        assert sent, f"{pattern} sent no statement"
        for statement, parameters in sent:
            counts = task_counts(session, statement, parameters)
            assert counts == [1] * len(counts) and counts, (pattern, statement, counts)
        session.rollback()


def test_a_statement_without_the_user_id_filter_runs_on_every_shard(
    citus_app: CitusApp, engine: Engine, alice: dict[str, Any]
) -> None:
    # Control: the policies alone do not route; the count of shards is what the test sees.
    with citus_app.admin() as admin:
        shards = admin.execute(
            "select count(*) from pg_dist_shard where logicalrelid = 'public.task'::regclass"
        ).fetchone()
    assert shards is not None and shards[0] > 1
    with scoped_session(engine, alice["user_id"]) as session:
        assert session.connection().execute(text("select count(*) from task")).scalar_one() > 0
        assert task_counts(session, "select count(*) from task", {}) == [shards[0]]
