"""todo_rls.chat as the application role: conversations and messages, for their owner only."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session, select

from todo_rls import (
    Conversation,
    InvalidInputError,
    Message,
    NotFoundError,
    chat,
    scoped_async_session,
    scoped_session,
)
from todo_rls.pagination import MAX_PAGE_SIZE

from dal_inspect import (
    assert_app_role,
    assert_filtered_by_user,
    index_condition,
    plan_of,
    statements_sent,
)


def new_conversation(engine: Engine, user: str, *contents: str, title: str = "chat") -> uuid.UUID:
    """A committed conversation of user holding one user message per content."""
    with scoped_session(engine, user) as session:
        conversation_id = chat.create_conversation(session, title).id
        assert conversation_id is not None
        for content in contents:
            chat.add_message(session, conversation_id, "user", content)
        session.commit()
    return conversation_id


def snapshot(engine: Engine, user: str, conversation_id: uuid.UUID) -> dict[str, Any]:
    """The conversation and its message contents, as their owner reads them."""
    with scoped_session(engine, user) as session:
        row = chat.get_conversation(session, conversation_id).model_dump()
        page = chat.list_messages(session, conversation_id, limit=MAX_PAGE_SIZE)
        row["messages"] = [message.content for message in page.items]
    assert row["id"] == conversation_id  # a loaded row, not the empty dump of an expired one
    return row


def count_rows(engine: Engine, user: str) -> tuple[int, int]:
    """How many conversations and messages user sees through a scoped session."""
    with scoped_session(engine, user) as session:
        conversations = session.exec(select(func.count()).select_from(Conversation)).one()
        messages = session.exec(select(func.count()).select_from(Message)).one()
    return conversations, messages


def test_create_conversation_returns_the_row_with_server_defaults(
    app_engine: Engine, alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        untitled = chat.create_conversation(session)
        titled = chat.create_conversation(session, "Trip plans")
        assert isinstance(untitled.id, uuid.UUID) and untitled.created_at is not None
        assert (untitled.title, titled.title, titled.user_id) == (None, "Trip plans", alice)
        assert chat.get_conversation(session, str(titled.id)) is titled
        session.commit()
    assert count_rows(app_engine, alice) == (2, 0)


def test_rename_conversation_sets_and_clears_the_title(app_engine: Engine, alice: str) -> None:
    conversation_id = new_conversation(app_engine, alice)
    with scoped_session(app_engine, alice) as session:
        loaded = chat.get_conversation(session, conversation_id)
        assert chat.rename_conversation(session, conversation_id, "renamed") is loaded
        assert loaded.title == "renamed"
        session.commit()
    assert snapshot(app_engine, alice, conversation_id)["title"] == "renamed"
    with scoped_session(app_engine, alice) as session:
        assert chat.rename_conversation(session, conversation_id, None).title is None
        session.commit()
    assert snapshot(app_engine, alice, conversation_id)["title"] is None


def test_add_message_marks_the_conversation_active(app_engine: Engine, alice: str) -> None:
    conversation_id = new_conversation(app_engine, alice)
    before = snapshot(app_engine, alice, conversation_id)
    with scoped_session(app_engine, alice) as session:
        message = chat.add_message(session, conversation_id, "assistant", "Hello!")
        assert (message.role, message.content, message.user_id) == ("assistant", "Hello!", alice)
        assert isinstance(message.id, uuid.UUID) and message.created_at is not None
        session.commit()
    after = snapshot(app_engine, alice, conversation_id)
    assert after["updated_at"] > before["updated_at"] and after["messages"] == ["Hello!"]


@pytest.mark.parametrize("change", ["add message", "rename"])
def test_changes_refresh_a_conversation_the_session_already_holds(
    app_engine: Engine, alice: str, change: str
) -> None:
    conversation_id = new_conversation(app_engine, alice)
    # Without expiry on commit (usual with asyncio), a stale copy would otherwise survive.
    with scoped_session(app_engine, alice, expire_on_commit=False) as session:
        loaded = chat.get_conversation(session, conversation_id)
        session.commit()
        if change == "rename":
            assert chat.rename_conversation(session, conversation_id, "renamed") is loaded
        else:
            chat.add_message(session, conversation_id, "user", "hi")
        fresh = loaded.model_dump()
        session.commit()
    owners_view = snapshot(app_engine, alice, conversation_id)
    assert fresh == {key: owners_view[key] for key in fresh}
    assert fresh["updated_at"] > fresh["created_at"]


def test_messages_saved_in_one_transaction_keep_their_order(app_engine: Engine, alice: str) -> None:
    contents = [f"message {n}" for n in range(8)]
    conversation_id = new_conversation(app_engine, alice, *contents)
    assert snapshot(app_engine, alice, conversation_id)["messages"] == contents


def test_list_messages_pages_oldest_first_without_gaps(app_engine: Engine, alice: str) -> None:
    contents = [f"message {n}" for n in range(7)]
    conversation_id = new_conversation(app_engine, alice, *contents)
    walked, after, sizes = [], None, []
    with scoped_session(app_engine, alice) as session:
        while True:
            page = chat.list_messages(session, conversation_id, after=after, limit=3)
            walked += [message.content for message in page.items]
            sizes.append(len(page.items))
            if (after := page.next_cursor) is None:
                break
    assert (walked, sizes) == (contents, [3, 3, 1])


def test_list_conversations_puts_the_most_recently_active_first(
    app_engine: Engine, alice: str, bob: str
) -> None:
    bobs = new_conversation(app_engine, bob)
    ids = [new_conversation(app_engine, alice, title=f"chat {n}") for n in range(5)]
    latest = new_conversation(app_engine, alice)
    with scoped_session(app_engine, alice) as session:
        chat.add_message(session, ids[0], "user", "back to the oldest chat")
        session.commit()
        first = chat.list_conversations(session, limit=4)
        rest = chat.list_conversations(session, after=first.next_cursor, limit=4)
    listed = [c.id for c in first.items + rest.items]
    assert listed == [ids[0], latest, *ids[:0:-1]]
    assert len(set(listed)) == 6 and bobs not in listed and rest.next_cursor is None


def test_list_messages_of_an_empty_conversation_is_an_empty_page(
    app_engine: Engine, alice: str
) -> None:
    conversation_id = new_conversation(app_engine, alice)
    with scoped_session(app_engine, alice) as session:
        page = chat.list_messages(session, conversation_id)
    assert (page.items, page.next_cursor) == ([], None)


def test_delete_conversation_cascades_to_its_messages(app_engine: Engine, alice: str) -> None:
    kept = new_conversation(app_engine, alice, "stays")
    dropped = new_conversation(app_engine, alice, "goes", "goes too")
    assert count_rows(app_engine, alice) == (2, 3)
    with scoped_session(app_engine, alice) as session:
        chat.delete_conversation(session, dropped)
        session.commit()
        with pytest.raises(NotFoundError, match=f"conversation {dropped} not found"):
            chat.list_messages(session, dropped)
    assert count_rows(app_engine, alice) == (1, 1)
    assert snapshot(app_engine, alice, kept)["messages"] == ["stays"]


def test_add_message_to_other_users_conversation_is_not_found_and_writes_nothing(
    app_engine: Engine, alice: str, bob: str
) -> None:
    bobs = new_conversation(app_engine, bob, "bob's message")  # bob can add: positive control
    alices = new_conversation(app_engine, alice)
    before = snapshot(app_engine, bob, bobs)
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        chat.add_message(session, alices, "user", "alice's own")  # and so can alice, to hers
        with pytest.raises(NotFoundError) as other_users:
            chat.add_message(session, bobs, "user", "planted by alice")
        session.commit()
    assert str(other_users.value) == f"conversation {bobs} not found"
    assert snapshot(app_engine, bob, bobs) == before  # same messages, same updated_at
    assert count_rows(app_engine, bob) == (1, 1)
    assert snapshot(app_engine, alice, alices)["messages"] == ["alice's own"]


OTHER_USER_OPERATIONS: dict[str, Callable[[Session, uuid.UUID], object]] = {
    "get": chat.get_conversation,
    "rename": lambda s, i: chat.rename_conversation(s, i, "hijacked"),
    "delete": chat.delete_conversation,
    "list messages": chat.list_messages,
}


@pytest.mark.parametrize("operation", OTHER_USER_OPERATIONS)
def test_other_users_conversation_is_not_found_and_unchanged(
    app_engine: Engine, alice: str, bob: str, operation: str
) -> None:
    act = OTHER_USER_OPERATIONS[operation]
    bobs = new_conversation(app_engine, bob, "bob's message")
    with scoped_session(app_engine, bob) as session:  # positive control: the owner can do it
        act(session, bobs)
        session.rollback()
    before = snapshot(app_engine, bob, bobs)
    missing = uuid.uuid4()
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        assert chat.list_conversations(session).items == []
        with pytest.raises(NotFoundError) as other_users:
            act(session, bobs)
        with pytest.raises(NotFoundError) as absent:
            act(session, missing)
        session.commit()
    # Word for word the same answer as for an id that does not exist.
    assert str(other_users.value) == f"conversation {bobs} not found"
    assert str(absent.value) == f"conversation {missing} not found"
    assert snapshot(app_engine, bob, bobs) == before


BAD_INPUTS: dict[str, Callable[[Session, uuid.UUID], object]] = {
    "empty title": lambda s, _: chat.create_conversation(s, ""),
    "blank title": lambda s, _: chat.create_conversation(s, "   "),
    "title too long": lambda s, _: chat.create_conversation(s, "x" * 201),
    "rename to blank": lambda s, i: chat.rename_conversation(s, i, "\t"),
    "unknown role": lambda s, i: chat.add_message(s, i, "robot", "hi"),
    "role not a str": lambda s, i: chat.add_message(s, i, None, "hi"),  # type: ignore[arg-type]
    "content not a str": lambda s, i: chat.add_message(s, i, "user", b"hi"),  # type: ignore[arg-type]
    "NUL in content": lambda s, i: chat.add_message(s, i, "user", "a\x00b"),
    "malformed id": lambda s, _: chat.add_message(s, "not-a-uuid", "user", "hi"),
    "limit zero": lambda s, i: chat.list_messages(s, i, limit=0),
    "limit too big": lambda s, _: chat.list_conversations(s, limit=MAX_PAGE_SIZE + 1),
    "garbage cursor": lambda s, i: chat.list_messages(s, i, after="%%%"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_written(
    app_engine: Engine, alice: str, case: str
) -> None:
    conversation_id = new_conversation(app_engine, alice, "existing")
    before = snapshot(app_engine, alice, conversation_id)
    with scoped_session(app_engine, alice) as session:
        with pytest.raises(InvalidInputError):
            BAD_INPUTS[case](session, conversation_id)
        session.commit()  # would write anything the failed call had left in the session
    assert count_rows(app_engine, alice) == (1, 1)
    assert snapshot(app_engine, alice, conversation_id) == before


def test_cursor_of_one_list_is_refused_by_another(app_engine: Engine, alice: str) -> None:
    conversation_id = new_conversation(app_engine, alice, "one", "two")
    new_conversation(app_engine, alice)
    with scoped_session(app_engine, alice) as session:
        messages_cursor = chat.list_messages(session, conversation_id, limit=1).next_cursor
        conversations_cursor = chat.list_conversations(session, limit=1).next_cursor
        assert messages_cursor is not None and conversations_cursor is not None
        with pytest.raises(InvalidInputError, match="not a conversation cursor"):
            chat.list_conversations(session, after=messages_cursor)
        with pytest.raises(InvalidInputError, match="not a message cursor"):
            chat.list_messages(session, conversation_id, after=conversations_cursor)


# Its own database: which plan serves the list depends on the table's page and row counts,
# and an ANALYZE in another test's rolled-back transaction on the shared database still
# leaves those (test_check_statistics); there test_tasks's twin once chose a plan that sorts.
@pytest.mark.own_database
@pytest.mark.parametrize(
    ("scan", "keyset"),
    [
        ("Index Scan Backward using ix_conversation_", "ROW(updated_at, id) < ROW("),
        ("Index Scan using ix_message_", "ROW(created_at, id) > ROW("),
    ],
)
def test_lists_are_index_range_scans_without_sorting(
    app_engine: Engine, alice: str, scan: str, keyset: str
) -> None:
    conversation_id = new_conversation(app_engine, alice, "one", "two")
    new_conversation(app_engine, alice)
    list_one: Callable[..., Any] = (
        chat.list_conversations
        if "conversation" in scan
        else lambda s, **kw: chat.list_messages(s, conversation_id, **kw)
    )
    with scoped_session(app_engine, alice) as session:
        cursor = list_one(session, limit=1).next_cursor
        plan = plan_of(session, lambda s: list_one(s, after=cursor))
    assert scan in plan and keyset in index_condition(plan) and "Sort" not in plan, plan


def test_every_statement_filters_by_the_user_as_well_as_rls(app_engine: Engine, alice: str) -> None:
    def everything(session: Session) -> None:
        first, second = chat.create_conversation(session), chat.create_conversation(session)
        assert first.id is not None and second.id is not None
        chat.add_message(session, first.id, "user", "one")
        chat.add_message(session, first.id, "assistant", "two")
        cursor = chat.list_conversations(session, limit=1).next_cursor
        chat.list_conversations(session, after=cursor, limit=1)
        cursor = chat.list_messages(session, first.id, limit=1).next_cursor
        chat.list_messages(session, first.id, after=cursor, limit=1)
        chat.list_messages(session, second.id)  # empty: also checks the conversation exists
        chat.get_conversation(session, first.id)
        chat.rename_conversation(session, first.id, "renamed")
        chat.delete_conversation(session, second.id)

    with scoped_session(app_engine, alice) as session:
        sent = statements_sent(session, everything)
    assert len(sent) == 15
    assert_filtered_by_user(sent, alice)


async def test_async_session_adds_messages_through_run_sync(
    app_async_engine: AsyncEngine, app_engine: Engine, alice: str
) -> None:
    async with scoped_async_session(app_async_engine, alice) as session:
        conversation = await session.run_sync(chat.create_conversation, "async")
        assert conversation.id is not None
        conversation_id = conversation.id
        await session.run_sync(chat.add_message, conversation_id, "user", "ping")
        await session.run_sync(chat.add_message, conversation_id, "assistant", "pong")
        # The bump left the loaded conversation fresh, not expired: no IO on attribute access.
        assert conversation.updated_at is not None and conversation.title == "async"
        page = await session.run_sync(chat.list_messages, conversation_id)
        assert [m.content for m in page.items] == ["ping", "pong"]
        await session.commit()
    assert snapshot(app_engine, alice, conversation_id)["messages"] == ["ping", "pong"]
