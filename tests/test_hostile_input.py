"""Hostile user ids and payloads: stored exactly as given, or refused naming the field.

A user id is any text: one that looks like SQL must reach the database as one quoted literal and
scope to exactly that id. A value the schema cannot hold is refused before any database work,
with an InvalidUserIdError or InvalidInputError that names the field and does not echo a huge
input; afterwards the superuser finds every table exactly as before.
"""

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session

from todo_rls import (
    InvalidInputError,
    InvalidUserIdError,
    chat,
    create_async_engine,
    create_engine,
    scoped_async_session,
    scoped_session,
    tasks,
)

from dal_inspect import assert_app_role
from fix_db import APP_LOGIN, LOGIN_PASSWORD, create_user
from fix_server import PgServer

# The longest message an error may carry: an error must not echo a megabyte back to a log.
ERROR_MAX_LENGTH = 200
MEGABYTE = 1_000_000


def everything(admin: psycopg.Connection[Any]) -> list[list[tuple[Any, ...]]]:
    """Every row of the three tables, as the superuser sees them."""
    return [
        admin.execute(query).fetchall()
        for query in (
            "select * from task order by id",
            "select * from conversation order by id",
            "select * from message order by id",
        )
    ]


SETTING = text("select current_setting('app.user_id', true)")


def scoped_setting(session: Session) -> object:
    return session.connection().execute(SETTING).scalar_one()


@pytest.fixture(scope="module")
def module_db(pg_server: PgServer, migrated_server: Any) -> Iterator[str]:
    """This module's own migrated database: its tests add rows of fresh users, nothing else."""
    with pg_server.scratch_database(template=migrated_server.template_dbname) as name:
        yield name


@pytest.fixture(scope="module")
def module_app_url(pg_server: PgServer, module_db: str) -> str:
    url = pg_server.url(module_db, user=APP_LOGIN, password=LOGIN_PASSWORD)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def module_engine(module_app_url: str) -> Iterator[Engine]:
    engine = create_engine(module_app_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def module_admin(pg_server: PgServer, module_db: str) -> Iterator[psycopg.Connection[Any]]:
    """Superuser connection to module_db, for arranging and checking. Never for isolation."""
    with pg_server.connect(module_db, autocommit=True) as conn:
        yield conn


# --- user ids --------------------------------------------------------------------------------

# Each is a valid user id (any text): SQL and format meta-characters, and near-misses of a
# real id. {real} is replaced by the id of a user who owns rows.
ODD_BUT_VALID_IDS = [
    "' or 1=1 --",
    "x' or '1'='1",
    "'); delete from task; --",
    "%s",
    "%(user_id)s",
    "$1",
    "$$ or true $$",
    "\\",
    "\\'; select 1; --",
    "e'\\x41'",
    ":user_id",
    "ü 用户 😀",
    "a\u2028b",  # a line separator, not a control character
    "'" * 255,
    " {real}",
    "{real} ",
    "{real}%",
    "{real}' or '1'='1",
]


@pytest.mark.parametrize("template", ODD_BUT_VALID_IDS)
def test_sql_like_user_id_scopes_to_exactly_that_id(
    module_engine: Engine, module_admin: psycopg.Connection[Any], template: str
) -> None:
    app_engine, admin = module_engine, module_admin
    real = create_user(admin)
    with scoped_session(app_engine, real) as session:  # positive control: the owner sees it
        tasks.create(session, "the real user's task")
        session.commit()
        assert len(tasks.list_page(session).items) == 1
    odd = create_user(admin, template.format(real=real))
    with scoped_session(app_engine, odd) as session:
        assert_app_role(session)
        assert scoped_setting(session) == odd  # quoted, not interpreted: byte for byte
        assert tasks.list_page(session).items == []
        assert tasks.count_open(session) == 0
        assert session.connection().execute(text("select count(*) from task")).one() == (0,)
        tasks.create(session, "odd user's task")
        session.commit()
    owners = admin.execute(
        "select user_id, title from task where user_id in (%s, %s) order by title", (odd, real)
    ).fetchall()
    assert owners == [(odd, "odd user's task"), (real, "the real user's task")]


@pytest.mark.parametrize("odd", ["' or 1=1 --", "%s\\'); $1"])
async def test_sql_like_user_id_scopes_async_sessions_too(
    app_async_engine: AsyncEngine, admin: psycopg.Connection[Any], odd: str
) -> None:
    alice = create_user(admin)
    async with scoped_async_session(app_async_engine, alice) as session:  # positive control
        await session.run_sync(tasks.create, "alice's task")
        await session.commit()
    async with scoped_async_session(app_async_engine, odd) as session:
        connection = await session.connection()
        assert (await connection.execute(SETTING)).scalar_one() == odd
        assert (await connection.execute(text("select count(*) from task"))).scalar_one() == 0
    alices = admin.execute("select count(*) from task where user_id = %s", (alice,)).fetchone()
    assert alices == (1,)  # the row the odd id did not see is there


REFUSED_IDS: list[tuple[object, str]] = [
    ("", "user id is empty or blank"),
    ("   ", "user id is empty or blank"),
    ("\t\n", "user id is empty or blank"),
    ("\u3000\u2003", "user id is empty or blank"),
    ("a" * 256, "user id is 256 characters; at most 255"),
    ("a" * MEGABYTE, f"user id is {MEGABYTE} characters; at most 255"),
    ("alice\x00", "user id contains a control character"),
    ("ali\nce", "user id contains a control character"),
    ("alice\x7f", "user id contains a control character"),
    ("\x1b[31malice", "user id contains a control character"),
    ("alice\x85forged log line", "user id contains a control character"),  # C1: NEL
    ("alice\ud800", "user id contains a lone surrogate"),
    (None, "user id must be a str, not NoneType"),
    (42, "user id must be a str, not int"),
    (4.2, "user id must be a str, not float"),
    (True, "user id must be a str, not bool"),
    (b"alice", "user id must be a str, not bytes"),
    (["alice"], "user id must be a str, not list"),
    ({"id": "alice"}, "user id must be a str, not dict"),
    (uuid.UUID(int=1), "user id must be a str, not UUID"),
]


# The one list of refused ids, for sync and async sessions alike (test_session*.py rely on it).
@pytest.mark.parametrize(("bad_id", "message"), REFUSED_IDS, ids=[m for _, m in REFUSED_IDS])
async def test_unusable_user_id_is_refused_before_a_connection_is_taken(
    module_app_url: str, bad_id: Any, message: str
) -> None:
    engine, async_engine = create_engine(module_app_url), create_async_engine(module_app_url)
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *args: checkouts.append(args))
    event.listen(async_engine.sync_engine, "checkout", lambda *args: checkouts.append(args))
    with pytest.raises(InvalidUserIdError) as sync_error, scoped_session(engine, bad_id):
        pytest.fail("a session was opened")
    with pytest.raises(InvalidUserIdError) as async_error:
        async with scoped_async_session(async_engine, bad_id):
            pytest.fail("an async session was opened")
    assert str(sync_error.value) == str(async_error.value)
    assert str(sync_error.value).startswith(message)
    assert len(str(sync_error.value)) <= ERROR_MAX_LENGTH
    assert checkouts == []
    engine.dispose()
    await async_engine.dispose()


# --- payloads --------------------------------------------------------------------------------

STORED_AS_GIVEN = [
    "' or 1=1 --",
    "'); drop table task; --",
    "%s %(title)s $1 :title ? {}",
    "\\ \\\\ \\' E'\\x00'",
    "tab\there\r\nnew line\x01\x7f",  # control characters other than NUL are text
    "ü 用户 😀 \u200b\u202e reversed",
    "\U0010fffd",  # the highest code point in a private-use plane
]


@pytest.mark.parametrize("payload", STORED_AS_GIVEN)
def test_hostile_payload_is_stored_exactly_as_given(
    module_engine: Engine, module_admin: psycopg.Connection[Any], payload: str
) -> None:
    app_engine, admin = module_engine, module_admin
    alice = create_user(admin)
    with scoped_session(app_engine, alice) as session:
        task = tasks.create(session, payload, payload)
        conversation = chat.create_conversation(session, payload)
        assert conversation.id is not None
        chat.add_message(session, conversation.id, "user", payload)
        session.commit()
        # Read back through the DAL, in a new transaction, as the owner.
        assert task.id is not None and tasks.get(session, task.id).description == payload
    stored = admin.execute(
        "select t.title, t.description, c.title, m.content"
        " from task t join conversation c using (user_id) join message m using (user_id)"
        " where user_id = %s",
        (alice,),
    ).fetchall()
    assert stored == [(payload, payload, payload, payload)]


def test_megabyte_description_and_message_round_trip(
    module_engine: Engine, module_admin: psycopg.Connection[Any], alice: str
) -> None:
    app_engine, admin = module_engine, module_admin
    # No length rule on free text beyond PostgreSQL's 1 GB: large is allowed, and exact.
    large = "é' or 1=1 -- " * (MEGABYTE // 13)
    with scoped_session(app_engine, alice) as session:
        tasks.create(session, "large", large)
        conversation = chat.create_conversation(session)
        assert conversation.id is not None
        chat.add_message(session, conversation.id, "assistant", large)
        session.commit()
    stored = admin.execute(
        "select t.description = %s, m.content = %s, length(m.content)"
        " from task t join message m using (user_id) where user_id = %s",
        (large, large, alice),
    ).fetchone()
    assert stored == (True, True, len(large))


@pytest.fixture
def alice(module_admin: psycopg.Connection[Any]) -> str:
    """A fresh user of module_db (this module's tests share that database)."""
    return create_user(module_admin)


@pytest.fixture
def alices_rows(module_engine: Engine, alice: str) -> tuple[uuid.UUID, uuid.UUID]:
    """alice's task and conversation (with one message), committed through the DAL."""
    with scoped_session(module_engine, alice) as session:
        task = tasks.create(session, "existing", "as it was")
        conversation = chat.create_conversation(session, "existing")
        assert task.id is not None and conversation.id is not None
        chat.add_message(session, conversation.id, "user", "existing")
        session.commit()
        return task.id, conversation.id


Call = Callable[[Session, uuid.UUID, uuid.UUID], object]
HUGE = "x" * MEGABYTE

# (call with alice's task id and conversation id, words the error must start with)
REFUSED_PAYLOADS: dict[str, tuple[Call, str]] = {
    # The values PostgreSQL's text cannot hold.
    "NUL in title": (lambda s, t, c: tasks.create(s, "a\x00b"), "title contains a NUL"),
    "NUL in description": (
        lambda s, t, c: tasks.update(s, t, description="a\x00"),
        "description contains a NUL",
    ),
    "NUL in conversation title": (
        lambda s, t, c: chat.rename_conversation(s, c, "\x00"),
        "conversation title contains a NUL",
    ),
    "NUL in message": (
        lambda s, t, c: chat.add_message(s, c, "user", "hi\x00"),
        "message content contains a NUL",
    ),
    "lone surrogate in message": (
        lambda s, t, c: chat.add_message(s, c, "user", "\udfff"),
        "message content contains a lone surrogate",
    ),
    # The schema's rules.
    "megabyte title": (lambda s, t, c: tasks.create(s, HUGE), "title must be 1 to 200"),
    "megabyte conversation title": (
        lambda s, t, c: chat.create_conversation(s, HUGE),
        "conversation title must be 1 to 200",
    ),
    "megabyte role": (
        lambda s, t, c: chat.add_message(s, c, HUGE, "hi"),
        "message role must be one of",
    ),
    "SQL as a role": (
        lambda s, t, c: chat.add_message(s, c, "user' or '1'='1", "hi"),
        "message role must be one of",
    ),
    # Wrong types.
    "int title": (lambda s, t, c: tasks.create(s, 5), "title must be a str, not int"),  # type: ignore[arg-type]
    "dict description": (
        lambda s, t, c: tasks.create(s, "ok", {"$ne": None}),  # type: ignore[arg-type]
        "description must be a str, not dict",
    ),
    "None title on update": (
        lambda s, t, c: tasks.update(s, t, title=None),  # type: ignore[arg-type]
        "title must be a str, not NoneType",
    ),
    "megabyte completed": (
        lambda s, t, c: tasks.update(s, t, completed=HUGE),  # type: ignore[arg-type]
        "completed must be True or False",
    ),
    "str completed": (
        lambda s, t, c: tasks.update(s, t, completed="false"),  # type: ignore[arg-type]
        "completed must be True or False",
    ),
    "bytes message": (
        lambda s, t, c: chat.add_message(s, c, "user", b"hi"),  # type: ignore[arg-type]
        "message content must be a str, not bytes",
    ),
    "list conversation title": (
        lambda s, t, c: chat.rename_conversation(s, c, ["x"]),  # type: ignore[arg-type]
        "conversation title must be a str, not list",
    ),
    # Ids that are not UUIDs.
    "None task id": (lambda s, t, c: tasks.get(s, None), "task id must be a UUID, not None"),  # type: ignore[arg-type]
    "int task id": (lambda s, t, c: tasks.delete(s, 1), "task id must be a UUID, not 1"),  # type: ignore[arg-type]
    "SQL task id": (
        lambda s, t, c: tasks.toggle(s, "' or 1=1 --"),
        'task id must be a UUID, not "\' or 1=1 --"',
    ),
    "dict task id": (
        lambda s, t, c: tasks.update(s, {"id": t}, title="x"),  # type: ignore[arg-type]
        "task id must be a UUID, not {'id': UUID(",
    ),
    "megabyte conversation id": (
        lambda s, t, c: chat.add_message(s, HUGE, "user", "hi"),
        "conversation id must be a UUID",
    ),
    "list conversation id": (
        lambda s, t, c: chat.delete_conversation(s, [c]),  # type: ignore[arg-type]
        "conversation id must be a UUID",
    ),
    # Pages.
    "float limit": (lambda s, t, c: tasks.list_page(s, limit=2.0), "limit must be an integer"),  # type: ignore[arg-type]
    "megabyte cursor": (
        lambda s, t, c: chat.list_messages(s, c, after=HUGE),
        "cursor is not a message cursor",
    ),
    "int cursor": (
        lambda s, t, c: chat.list_conversations(s, after=5),  # type: ignore[arg-type]
        "cursor is not a conversation cursor",
    ),
}


@pytest.mark.parametrize("case", REFUSED_PAYLOADS)
def test_bad_value_is_refused_naming_the_field_and_nothing_is_written(
    module_engine: Engine,
    module_admin: psycopg.Connection[Any],
    alice: str,
    alices_rows: tuple[uuid.UUID, uuid.UUID],
    case: str,
) -> None:
    call, message = REFUSED_PAYLOADS[case]
    before = everything(module_admin)
    alices = [[row for row in rows if alice in row] for rows in before]
    assert [len(rows) for rows in alices] == [1, 1, 1]  # the rows a failed call could harm
    with scoped_session(module_engine, alice) as session:
        with pytest.raises(InvalidInputError) as refused:
            call(session, *alices_rows)
        session.commit()  # would write anything the failed call had left in the session
    assert str(refused.value).startswith(message)
    assert len(str(refused.value)) <= ERROR_MAX_LENGTH
    assert everything(module_admin) == before
