"""Random walks through the DAL by several users and unscoped sessions, checked against a model.

Hypothesis drives todo_rls.tasks and todo_rls.chat through scoped_session on the application
role; a plain Python oracle says which rows must exist and whose they are. After every step an
unscoped session sees nothing and the superuser's view of the whole database equals the oracle,
so a write that went to the wrong owner fails too; after every step that changed a row (and at
the start) each user sees exactly the oracle's rows for them, through the DAL and through
unfiltered queries that only row-level security narrows.

Reproducing a failure: Hypothesis prints the steps and a ``@reproduce_failure`` blob. With
CI=true the examples are derandomized (the same on every run), so a CI failure replays locally
with ``CI=true pytest tests/test_model_based.py``; without it, each run explores new walks.
"""

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, exc
from sqlmodel import Session, col

from todo_rls import Conversation, Message, NotFoundError, Task, chat, scoped_session, tasks
from todo_rls.models import MESSAGE_ROLES
from todo_rls.owned_rows import update_owned

from dal_inspect import assert_app_role
from fix_db import create_user, new_user_id

# Two ids shaped like Better Auth's and two that look like SQL: any text is a valid user id,
# and it must reach the database as one quoted literal.
HOSTILE_USER_IDS = ("' or 1=1 --", "%s\\'); $1")
PAGE_SIZE = 3  # small, so the lists cross several pages and their cursors

# The machine compares every row of the tables with its oracle, truncates them, and uses fixed
# hostile user ids: it needs a database of its own.
pytestmark = [pytest.mark.own_database, pytest.mark.slow]

# How many walks, how long, and whether derandomized: the profile tests/conftest.py loads
# ("ci" in CI, else "dev").
MODEL_SETTINGS = settings(
    deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)


class TaskRow(NamedTuple):
    user_id: str
    title: str
    description: str | None
    completed: bool


class ConversationRow(NamedTuple):
    user_id: str
    title: str | None


class MessageRow(NamedTuple):
    user_id: str
    conversation_id: uuid.UUID
    role: str
    content: str


@dataclass(frozen=True)
class World:
    """What the machine runs against: the app-role engine, the superuser and the users."""

    engine: Engine
    admin: psycopg.Connection[Any]
    users: tuple[str, ...]


# Titles: arbitrary valid text (no NUL, no lone surrogate, not blank) and SQL-looking strings.
_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),  # no lone surrogate
    min_size=1,
    max_size=30,
)
titles = st.one_of(
    st.sampled_from(["' or 1=1 --", "%s", "$1", "\\", "'; drop table task; --", "😀 ü"]),
    _TEXT.filter(lambda title: not title.isspace()),
)
texts = st.one_of(st.sampled_from(["' or '1'='1", "%(user_id)s", "\\x00", "\r\n"]), _TEXT)
# An index into the oracle's rows of every user (so also other users' rows), or None.
picks = st.none() | st.integers(min_value=0, max_value=1_000)


def expect_refused(what: str, action: Callable[[], object]) -> Exception:
    """The exception action raises; an AssertionError if it succeeds."""
    try:
        action()
    except Exception as error:
        return error
    raise AssertionError(f"{what} was not refused")


def assert_not_found_like_a_missing_id(
    act: Callable[[uuid.UUID], object], row_id: uuid.UUID, missing: uuid.UUID, table: str
) -> None:
    """act(row_id) fails exactly as act(missing) does: same type, same words but the id."""
    hidden = expect_refused(f"{table} {row_id} of another user", lambda: act(row_id))
    absent = expect_refused(f"missing {table} {missing}", lambda: act(missing))
    assert type(hidden) is type(absent) is NotFoundError, (hidden, absent)
    assert str(hidden) == f"{table} {row_id} not found", hidden
    assert str(absent) == f"{table} {missing} not found", absent


def walk(list_page: Callable[[str | None], Any]) -> list[Any]:
    """Every item of a paginated list, following next_cursor to the end."""
    items: list[Any] = []
    after: str | None = None
    while True:
        page = list_page(after)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        after = page.next_cursor


def assert_ordered(keys: list[tuple[Any, uuid.UUID]], descending: bool) -> None:
    assert keys == sorted(keys, reverse=descending), "a list is out of order"
    assert len({key[1] for key in keys}) == len(keys), "a row is listed twice"


MODELS = (Task, Conversation, Message)


class DalMachine(RuleBasedStateMachine):
    """Users and unscoped sessions acting through the DAL, against dictionaries of rows."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        # Insertion order matters: a pick must name the same row when Hypothesis replays.
        self.tasks: dict[uuid.UUID, TaskRow] = {}
        self.conversations: dict[uuid.UUID, ConversationRow] = {}
        self.messages: dict[uuid.UUID, MessageRow] = {}
        # The tables' every column, as the superuser read them when each user's view was last
        # checked: None before the first check.
        self.checked_contents: tuple[str, ...] | None = None

    # --- helpers ---------------------------------------------------------------------------

    @contextmanager
    def acting_as(self, who: int) -> Iterator[tuple[str, Session]]:
        """A scoped session of user number who; committed, so refused calls must leave nothing."""
        user = self.world.users[who]
        with scoped_session(self.world.engine, user) as session:
            yield user, session
            session.commit()

    @staticmethod
    def target(rows: Mapping[uuid.UUID, Any], pick: int | None, missing: uuid.UUID) -> uuid.UUID:
        """Row number pick of rows (any user's), or an id that names no row."""
        if pick is None or not rows:
            return missing
        return list(rows)[pick % len(rows)]

    def owner(self, rows: Mapping[uuid.UUID, Any], row_id: uuid.UUID) -> str | None:
        row = rows.get(row_id)
        return None if row is None else str(row.user_id)

    # --- tasks -----------------------------------------------------------------------------

    @rule(who=st.integers(0, 3), title=titles, description=st.none() | texts)
    def create_task(self, who: int, title: str, description: str | None) -> None:
        with self.acting_as(who) as (user, session):
            task = tasks.create(session, title, description)
            assert task.id is not None and task.id not in self.tasks
            self.tasks[task.id] = TaskRow(user, title, description, False)

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids(), title=titles)
    def update_task_title(self, who: int, pick: int | None, missing: uuid.UUID, title: str) -> None:
        task_id = self.target(self.tasks, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.tasks, task_id) == user:
                assert tasks.update(session, task_id, title=title).title == title
                self.tasks[task_id] = self.tasks[task_id]._replace(title=title)
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: tasks.update(session, i, title=title), task_id, missing, "task"
                )

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids())
    def toggle_task(self, who: int, pick: int | None, missing: uuid.UUID) -> None:
        task_id = self.target(self.tasks, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.tasks, task_id) == user:
                row = self.tasks[task_id]
                assert tasks.toggle(session, task_id).completed is not row.completed
                self.tasks[task_id] = row._replace(completed=not row.completed)
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: tasks.toggle(session, i), task_id, missing, "task"
                )

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids())
    def delete_task(self, who: int, pick: int | None, missing: uuid.UUID) -> None:
        task_id = self.target(self.tasks, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.tasks, task_id) == user:
                tasks.delete(session, task_id)
                del self.tasks[task_id]
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: tasks.delete(session, i), task_id, missing, "task"
                )

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids())
    def get_task(self, who: int, pick: int | None, missing: uuid.UUID) -> None:
        task_id = self.target(self.tasks, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.tasks, task_id) == user:
                task = tasks.get(session, task_id)
                assert (
                    TaskRow(task.user_id, task.title, task.description, task.completed)
                    == (self.tasks[task_id])
                )
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: tasks.get(session, i), task_id, missing, "task"
                )

    @rule(
        who=st.integers(0, 3),
        by_owner=st.booleans(),
        pick=picks,
        missing=st.uuids(),
        to=st.integers(0, 3),
        table=st.sampled_from(["task", "conversation"]),
        through_dal=st.booleans(),
    )
    def re_own(
        self,
        who: int,
        by_owner: bool,
        pick: int | None,
        missing: uuid.UUID,
        to: int,
        table: str,
        through_dal: bool,
    ) -> None:
        """Move rows to another user: never allowed, by the DAL's UPDATE helper or plain SQL."""
        model: type[Task] | type[Conversation] = Task if table == "task" else Conversation
        rows: Mapping[uuid.UUID, Any] = self.tasks if table == "task" else self.conversations
        row_id = self.target(rows, pick, missing)
        owner = self.owner(rows, row_id)
        if by_owner and owner is not None:  # the owner's attempt: only the policies stop it
            who = self.world.users.index(owner)
        with self.acting_as(who) as (user, session):
            others = [other for other in self.world.users if other != user]
            new_owner = others[to % len(others)]

            def move() -> int:
                if through_dal:  # UPDATE ... WHERE id AND user_id = me ... RETURNING
                    update_owned(session, model, row_id, {"user_id": new_owner})
                    return 1
                # Every row it can see, no WHERE and no RETURNING: PostgreSQL then applies no
                # SELECT policy to the new rows, so only the UPDATE policy's WITH CHECK refuses.
                statement = sa.update(model).values(user_id=new_owner)
                return session.connection().execute(statement).rowcount

            owns = owner == user if through_dal else any(r.user_id == user for r in rows.values())
            if owns:  # the owner's rows pass USING; the new owner fails WITH CHECK: 42501
                error = expect_refused(f"moving {user!r}'s {table} to {new_owner!r}", move)
                assert isinstance(error, exc.ProgrammingError), error
                assert isinstance(error.orig, psycopg.errors.InsufficientPrivilege), error
                session.rollback()
            elif through_dal:
                error = expect_refused(f"moving {table} {row_id} of another user", move)
                assert type(error) is NotFoundError, error
            else:
                assert move() == 0, f"{user!r} moved {table} rows that are not theirs"

    # --- conversations and messages --------------------------------------------------------

    @rule(who=st.integers(0, 3), title=st.none() | titles)
    def create_conversation(self, who: int, title: str | None) -> None:
        with self.acting_as(who) as (user, session):
            conversation = chat.create_conversation(session, title)
            assert conversation.id is not None
            self.conversations[conversation.id] = ConversationRow(user, title)

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids(), title=st.none() | titles)
    def rename_conversation(
        self, who: int, pick: int | None, missing: uuid.UUID, title: str | None
    ) -> None:
        conversation_id = self.target(self.conversations, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.conversations, conversation_id) == user:
                chat.rename_conversation(session, conversation_id, title)
                self.conversations[conversation_id] = ConversationRow(user, title)
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: chat.rename_conversation(session, i, title),
                    conversation_id,
                    missing,
                    "conversation",
                )

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids())
    def delete_conversation(self, who: int, pick: int | None, missing: uuid.UUID) -> None:
        conversation_id = self.target(self.conversations, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.conversations, conversation_id) == user:
                chat.delete_conversation(session, conversation_id)
                del self.conversations[conversation_id]
                for message_id, message in list(self.messages.items()):  # the FK cascades
                    if message.conversation_id == conversation_id:
                        del self.messages[message_id]
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: chat.delete_conversation(session, i),
                    conversation_id,
                    missing,
                    "conversation",
                )

    @rule(
        who=st.integers(0, 3),
        pick=picks,
        missing=st.uuids(),
        role=st.sampled_from(MESSAGE_ROLES),
        content=texts,
    )
    def add_message(
        self, who: int, pick: int | None, missing: uuid.UUID, role: str, content: str
    ) -> None:
        conversation_id = self.target(self.conversations, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.conversations, conversation_id) == user:
                message = chat.add_message(session, conversation_id, role, content)
                assert message.id is not None
                self.messages[message.id] = MessageRow(user, conversation_id, role, content)
            else:  # another user's conversation reads exactly like one that does not exist
                assert_not_found_like_a_missing_id(
                    lambda i: chat.add_message(session, i, role, content),
                    conversation_id,
                    missing,
                    "conversation",
                )

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids())
    def list_messages(self, who: int, pick: int | None, missing: uuid.UUID) -> None:
        conversation_id = self.target(self.conversations, pick, missing)
        with self.acting_as(who) as (user, session):
            if self.owner(self.conversations, conversation_id) == user:
                listed = walk(
                    lambda after: chat.list_messages(
                        session, conversation_id, after=after, limit=PAGE_SIZE
                    )
                )
                expected = [
                    message_id
                    for message_id, message in self.messages.items()
                    if message.conversation_id == conversation_id
                ]
                assert [message.id for message in listed] == expected  # oldest first
            else:
                assert_not_found_like_a_missing_id(
                    lambda i: chat.list_messages(session, i),
                    conversation_id,
                    missing,
                    "conversation",
                )

    # --- unscoped sessions -----------------------------------------------------------------

    @rule(who=st.integers(0, 3), pick=picks, missing=st.uuids())
    def unscoped_session_writes(self, who: int, pick: int | None, missing: uuid.UUID) -> None:
        """A plain Session on the app role changes nothing and cannot insert."""
        task_id = self.target(self.tasks, pick, missing)
        with Session(self.world.engine) as session:
            bad = expect_refused(
                "the DAL on an unscoped session", lambda: tasks.get(session, task_id)
            )
            assert isinstance(bad, TypeError), bad
            changed = session.connection().execute(
                sa.update(Task).where(col(Task.id) == task_id).values(title="unscoped")
            )
            removed = session.connection().execute(sa.delete(Conversation))
            assert (changed.rowcount, removed.rowcount) == (0, 0)
            session.commit()
            session.add(Task(user_id=self.world.users[who], title="unscoped"))
            error = expect_refused("an unscoped insert", session.flush)
            assert isinstance(error, exc.ProgrammingError), error
            assert isinstance(error.orig, psycopg.errors.InsufficientPrivilege), error

    # --- invariants ------------------------------------------------------------------------

    def expected_of(self, user: str) -> tuple[dict[uuid.UUID, Any], ...]:
        return tuple(
            {row_id: row for row_id, row in rows.items() if row.user_id == user}
            for rows in (self.tasks, self.conversations, self.messages)
        )

    @invariant()
    def each_user_sees_exactly_their_rows(self) -> None:
        # What a user sees is a function of the rows alone (users, policies and keys are fixed
        # for a walk, and each session is scoped afresh): after a step that changed no byte of
        # the three tables (a read, a refused write) the views are the ones checked already.
        # Pooled connections carrying state between users are test_session.py's.
        contents = tuple(self.world.admin.execute(TABLE_CONTENTS).fetchall()[0])
        if contents == self.checked_contents:
            return
        for user in self.world.users:
            own_tasks, own_conversations, own_messages = self.expected_of(user)
            with scoped_session(self.world.engine, user) as session:
                # Through the DAL, which filters by user_id on top of RLS.
                listed = walk(lambda after: tasks.list_page(session, after=after, limit=PAGE_SIZE))
                dal_tasks = {
                    t.id: TaskRow(t.user_id, t.title, t.description, t.completed) for t in listed
                }
                assert dal_tasks == own_tasks, f"{user!r}'s tasks through the DAL"
                assert_ordered([(t.created_at, t.id) for t in listed], descending=True)
                open_tasks = sum(not row.completed for row in own_tasks.values())
                assert tasks.count_open(session) == open_tasks, f"{user!r}'s count_open"
                listed_c = walk(
                    lambda after: chat.list_conversations(session, after=after, limit=PAGE_SIZE)
                )
                dal_conversations = {c.id: ConversationRow(c.user_id, c.title) for c in listed_c}
                assert dal_conversations == own_conversations, f"{user!r}'s conversations via DAL"
                assert_ordered([(c.updated_at, c.id) for c in listed_c], descending=True)
                # Without any WHERE: only the policies stand between the user and other rows.
                read = session.connection().exec_driver_sql
                seen = [
                    rows_of(read, ALL_TASKS, TaskRow),
                    rows_of(read, ALL_CONVERSATIONS, ConversationRow),
                    rows_of(read, ALL_MESSAGES, MessageRow),
                ]
                expected = [own_tasks, own_conversations, own_messages]
                assert seen == expected, f"{user!r}'s rows through RLS alone"
        self.checked_contents = contents

    @invariant()
    def unscoped_session_sees_nothing(self) -> None:
        with Session(self.world.engine) as session:
            count = [sa.select(sa.func.count()).select_from(t).scalar_subquery() for t in MODELS]
            counts = session.execute(sa.select(*count)).one()
        assert tuple(counts) == (0, 0, 0), "an unscoped session sees rows"

    @invariant()
    def database_holds_exactly_the_oracle(self) -> None:
        read = self.world.admin.execute
        stored = [
            rows_of(read, ALL_TASKS, TaskRow),
            rows_of(read, ALL_CONVERSATIONS, ConversationRow),
            rows_of(read, ALL_MESSAGES, MessageRow),
        ]
        expected = [self.tasks, self.conversations, self.messages]
        assert stored == expected, "the database differs from the model"

    def teardown(self) -> None:
        # Every session above is closed, so no transaction holds a lock TRUNCATE would wait on.
        self.world.admin.execute("truncate task, conversation, message")


# Every row of a table, no WHERE: as a scoped user only the policies narrow these.
ALL_TASKS = "select id, user_id, title, description, completed from task"
ALL_CONVERSATIONS = "select id, user_id, title from conversation"
ALL_MESSAGES = "select id, user_id, conversation_id, role, content from message"
# Every column of every row of the three tables, timestamps included, as the superuser sees them.
TABLE_CONTENTS = "select " + ", ".join(
    f"(select coalesce(pg_catalog.string_agg(t::text, e'\\n' order by t.id), '') from {table} t)"
    for table in ("task", "conversation", "message")
)


def rows_of(
    execute: Callable[[str], Any], query: str, row: Callable[..., Any]
) -> dict[uuid.UUID, Any]:
    """{id: row(*other columns)} of query, run by a scoped session or by the superuser."""
    return {values[0]: row(*values[1:]) for values in execute(query).fetchall()}


def machine_for(world: World) -> type[DalMachine]:
    """DalMachine bound to world, in the form run_state_machine_as_test takes."""

    class BoundDalMachine(DalMachine):
        def __init__(self) -> None:
            super().__init__(world)

    return BoundDalMachine


@pytest.fixture
def world(app_engine: Engine, admin: psycopg.Connection[Any]) -> World:
    users = (new_user_id(), new_user_id(), *HOSTILE_USER_IDS)
    for user in users:
        create_user(admin, user)
    with scoped_session(app_engine, users[0]) as session:
        assert_app_role(session)  # the machine runs as the application role, RLS on
    return World(app_engine, admin, users)


def test_what_every_user_sees_matches_the_model(world: World) -> None:
    run_state_machine_as_test(machine_for(world), settings=MODEL_SETTINGS)


# (weakening, what the machine reports). Two of the many: test_policy_weakening.py covers the
# rest with targeted probes; these show the random walk itself can fail.
WEAKENINGS = {
    # The DAL's own user_id filter still hides other rows: only the unfiltered read sees them.
    "select policy always true": (
        "alter policy task_select on task using (true)",
        "rows through RLS alone",
    ),
    # The DAL's UPDATE ... RETURNING is still refused (RETURNING applies the SELECT policy to
    # the new row); the bare UPDATE of every row is not.
    "update policy that checks nothing": (
        "alter policy task_update on task with check (true)",
        "was not refused",
    ),
}


@pytest.mark.parametrize("weakening", WEAKENINGS)
def test_model_catches_a_weakened_policy(world: World, weakening: str) -> None:
    statement, report = WEAKENINGS[weakening]
    world.admin.execute(statement)
    # Derandomized: the same walk finds it on every run. No shrinking: the first failure is enough.
    # The walk's size is fixed here, not the profile's: these walks are known to find it.
    catching = settings(
        MODEL_SETTINGS,
        max_examples=20,
        stateful_step_count=30,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
    )
    with pytest.raises(AssertionError, match=report):
        run_state_machine_as_test(machine_for(world), settings=catching)
