"""todo_rls.tasks as the application role: each operation works for the owner, and only them."""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session, select

from todo_rls import (
    InvalidInputError,
    NotFoundError,
    Task,
    scoped_async_session,
    scoped_session,
    tasks,
)
from todo_rls.pagination import MAX_PAGE_SIZE, decode_cursor, encode_cursor

from dal_inspect import (
    assert_app_role,
    assert_filtered_by_user,
    index_condition,
    plan_of,
    statements_sent,
)

Connect = Callable[..., psycopg.Connection[Any]]


def create_committed(engine: Engine, user: str, *titles: str) -> list[uuid.UUID]:
    """Create tasks for user in one committed transaction; return their ids."""
    with scoped_session(engine, user) as session:
        created = [tasks.create(session, title) for title in titles]
        session.commit()
        return [task.id for task in created if task.id is not None]


def snapshot(engine: Engine, user: str, task_id: uuid.UUID) -> dict[str, Any]:
    """The task as its owner reads it through a scoped session."""
    with scoped_session(engine, user) as session:
        row = tasks.get(session, task_id).model_dump()
    assert row["id"] == task_id  # a loaded row, not the empty dump of an expired one
    return row


def count_tasks(engine: Engine, user: str) -> int:
    """How many tasks user sees through a scoped session."""
    with scoped_session(engine, user) as session:
        return session.exec(select(func.count()).select_from(Task)).one()


def walk(session: Session, limit: int, **filters: Any) -> list[list[Task]]:
    """Every page of list_page, following next_cursor to the end."""
    pages: list[list[Task]] = []
    after: str | None = None
    while True:
        page = tasks.list_page(session, after=after, limit=limit, **filters)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        after = page.next_cursor


def newest_first(items: list[Task]) -> list[uuid.UUID | None]:
    return [t.id for t in sorted(items, key=lambda t: (t.created_at, t.id), reverse=True)]


def test_create_returns_the_row_with_server_defaults(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        task = tasks.create(session, "write tests", "for the DAL")
        assert isinstance(task.id, uuid.UUID)
        assert task.created_at is not None and task.created_at == task.updated_at
        assert (task.user_id, task.completed) == (alice, False)
        created = task.model_dump()
        session.commit()
    assert snapshot(app_engine, alice, created["id"]) == created


def test_title_limits_match_the_schema(app_engine: Engine, alice: str) -> None:
    for title in ("x", "x" * 200, " padded title "):
        create_committed(app_engine, alice, title)
    assert count_tasks(app_engine, alice) == 3


def test_list_page_walks_every_task_once_newest_first(
    app_engine: Engine, alice: str, bob: str
) -> None:
    bobs = create_committed(app_engine, bob, "bob's task")
    with scoped_session(app_engine, bob) as session:  # positive control: bob lists his task
        assert [t.id for t in tasks.list_page(session).items] == bobs
    # Several tasks per transaction share created_at, so id must break the ties.
    for batch in (("a", "b", "c"), ("d",), ("e", "f", "g")):
        create_committed(app_engine, alice, *batch)
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        pages = walk(session, limit=3)
        everything = tasks.list_page(session, limit=MAX_PAGE_SIZE).items
    assert [len(items) for items in pages] == [3, 3, 1]
    walked = [t.id for items in pages for t in items]
    assert walked == newest_first(everything) and len(set(walked)) == 7
    assert not set(walked) & set(bobs)


def test_list_page_has_no_empty_last_page(app_engine: Engine, alice: str) -> None:
    create_committed(app_engine, alice, "a", "b", "c", "d")
    with scoped_session(app_engine, alice) as session:
        assert [len(items) for items in walk(session, limit=2)] == [2, 2]


def test_list_page_filters_by_completed(app_engine: Engine, alice: str) -> None:
    ids = create_committed(app_engine, alice, "a", "b", "c", "d", "e")
    with scoped_session(app_engine, alice) as session:
        for task_id in ids[:3]:
            tasks.update(session, task_id, completed=True)
        session.commit()
        done = walk(session, limit=2, completed=True)
        still_open = walk(session, limit=2, completed=False)
    assert {t.id for items in done for t in items} == set(ids[:3])
    assert [len(items) for items in done] == [2, 1]
    assert {t.id for items in still_open for t in items} == set(ids[3:])
    assert all(t.completed for items in done for t in items)


def test_count_open_counts_only_the_users_open_tasks(
    app_engine: Engine, alice: str, bob: str
) -> None:
    create_committed(app_engine, bob, "bob 1", "bob 2")
    ids = create_committed(app_engine, alice, "a", "b", "c")
    with scoped_session(app_engine, alice) as session:
        assert tasks.count_open(session) == 3
        tasks.toggle(session, ids[0])
        assert tasks.count_open(session) == 2
    with scoped_session(app_engine, bob) as session:
        assert tasks.count_open(session) == 2


def test_update_changes_only_the_fields_given(app_engine: Engine, alice: str) -> None:
    with scoped_session(app_engine, alice) as session:
        task_id = tasks.create(session, "draft", "keep me").id
        session.commit()
    assert task_id is not None
    before = snapshot(app_engine, alice, task_id)
    with scoped_session(app_engine, alice) as session:
        task = tasks.update(session, task_id, title="final")
        assert (task.title, task.description, task.completed) == ("final", "keep me", False)
        assert task.updated_at is not None and task.updated_at > before["updated_at"]
        task = tasks.update(session, task_id, description=None, completed=True)
        assert (task.title, task.description, task.completed) == ("final", None, True)
        assert tasks.update(session, task_id) is task  # nothing given: nothing to change
        session.commit()
    after = snapshot(app_engine, alice, task_id)
    assert (after["title"], after["description"], after["completed"]) == ("final", None, True)
    assert after["created_at"] == before["created_at"]


def test_toggle_twice_flips_back(app_engine: Engine, alice: str) -> None:
    (task_id,) = create_committed(app_engine, alice, "flip me")
    with scoped_session(app_engine, alice) as session:
        assert tasks.toggle(session, task_id).completed is True
        session.commit()
        assert snapshot(app_engine, alice, task_id)["completed"] is True
        assert tasks.toggle(session, task_id).completed is False
        session.commit()
    assert snapshot(app_engine, alice, task_id)["completed"] is False


@pytest.mark.parametrize("change", ["toggle", "update"])
def test_changes_refresh_a_task_the_session_already_holds(
    app_engine: Engine, alice: str, change: str
) -> None:
    (task_id,) = create_committed(app_engine, alice, "loaded")
    # Without expiry on commit (usual with asyncio), a stale copy would otherwise survive.
    with scoped_session(app_engine, alice, expire_on_commit=False) as session:
        loaded = tasks.get(session, task_id)
        session.commit()
        if change == "toggle":
            changed = tasks.toggle(session, task_id)
        else:
            changed = tasks.update(session, task_id, completed=True)
        assert changed is loaded
        fresh = loaded.model_dump()
        session.commit()
    assert fresh == snapshot(app_engine, alice, task_id)
    assert fresh["completed"] is True and fresh["updated_at"] > fresh["created_at"]


def test_delete_removes_the_task(app_engine: Engine, alice: str) -> None:
    keep, drop = create_committed(app_engine, alice, "keep", "drop")
    with scoped_session(app_engine, alice) as session:
        tasks.delete(session, drop)
        session.commit()
        with pytest.raises(NotFoundError, match=f"task {drop} not found"):
            tasks.get(session, drop)
        with pytest.raises(NotFoundError):
            tasks.delete(session, drop)
    assert count_tasks(app_engine, alice) == 1
    assert snapshot(app_engine, alice, keep)["title"] == "keep"


OTHER_USER_OPERATIONS: dict[str, Callable[[Session, uuid.UUID], object]] = {
    "get": tasks.get,
    "update": lambda s, i: tasks.update(s, i, title="hijacked", completed=True),
    "toggle": tasks.toggle,
    "delete": tasks.delete,
}


@pytest.mark.parametrize("operation", OTHER_USER_OPERATIONS)
def test_other_users_task_is_not_found_and_unchanged(
    app_engine: Engine, alice: str, bob: str, operation: str
) -> None:
    act = OTHER_USER_OPERATIONS[operation]
    (bobs,) = create_committed(app_engine, bob, "bob's task")
    with scoped_session(app_engine, bob) as session:  # positive control: the owner can do it
        act(session, bobs)
        session.rollback()
    before = snapshot(app_engine, bob, bobs)
    missing = uuid.uuid4()
    with scoped_session(app_engine, alice) as session:
        assert_app_role(session)
        with pytest.raises(NotFoundError) as other_users:
            act(session, bobs)
        with pytest.raises(NotFoundError) as absent:
            act(session, missing)
        session.commit()
    # Word for word the same answer as for an id that does not exist.
    assert str(other_users.value) == f"task {bobs} not found"
    assert str(absent.value) == f"task {missing} not found"
    assert snapshot(app_engine, bob, bobs) == before


def test_other_users_tasks_are_not_listed_or_counted(
    app_engine: Engine, alice: str, bob: str
) -> None:
    (bobs,) = create_committed(app_engine, bob, "bob's task")
    with scoped_session(app_engine, bob) as session:  # positive control
        assert [t.id for t in tasks.list_page(session).items] == [bobs]
        assert tasks.count_open(session) == 1
    with scoped_session(app_engine, alice) as session:
        assert tasks.list_page(session).items == []
        assert tasks.count_open(session) == 0
        # A well-formed cursor placed anywhere still pages only through alice's own rows.
        forged = encode_cursor("task", datetime(9999, 1, 1, tzinfo=UTC), uuid.UUID(int=0))
        assert tasks.list_page(session, after=forged).items == []


BAD_INPUTS: dict[str, Callable[[Session, uuid.UUID], object]] = {
    "empty title": lambda s, _: tasks.create(s, ""),
    "blank title": lambda s, _: tasks.create(s, " \t\n"),
    "unicode-blank title": lambda s, _: tasks.create(s, "\u3000\u2003"),
    "title too long": lambda s, _: tasks.create(s, "x" * 201),
    "title not a str": lambda s, _: tasks.create(s, None),  # type: ignore[arg-type]
    "NUL in title": lambda s, _: tasks.create(s, "a\x00b"),
    "lone surrogate": lambda s, _: tasks.create(s, "a\ud800"),
    "description not a str": lambda s, _: tasks.create(s, "ok", 5),  # type: ignore[arg-type]
    "update blank title": lambda s, i: tasks.update(s, i, title=" "),
    "update completed not bool": lambda s, i: tasks.update(s, i, completed="yes"),  # type: ignore[arg-type]
    "update title and bad id": lambda s, _: tasks.update(s, "not-a-uuid", title="ok"),
    "malformed id": lambda s, _: tasks.get(s, "not-a-uuid"),
    "limit zero": lambda s, _: tasks.list_page(s, limit=0),
    "limit negative": lambda s, _: tasks.list_page(s, limit=-1),
    "limit too big": lambda s, _: tasks.list_page(s, limit=MAX_PAGE_SIZE + 1),
    "limit not an int": lambda s, _: tasks.list_page(s, limit="20"),  # type: ignore[arg-type]
    "completed filter not bool": lambda s, _: tasks.list_page(s, completed=1),  # type: ignore[arg-type]
    "garbage cursor": lambda s, _: tasks.list_page(s, after="not a cursor!"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_written(
    app_engine: Engine, alice: str, case: str
) -> None:
    (task_id,) = create_committed(app_engine, alice, "existing")
    before = snapshot(app_engine, alice, task_id)
    with scoped_session(app_engine, alice) as session:
        with pytest.raises(InvalidInputError):
            BAD_INPUTS[case](session, task_id)
        session.commit()  # would write anything the failed call had left in the session
    assert count_tasks(app_engine, alice) == 1
    assert snapshot(app_engine, alice, task_id) == before


def test_every_statement_filters_by_the_user_as_well_as_rls(app_engine: Engine, alice: str) -> None:
    def everything(session: Session) -> None:
        first, second = tasks.create(session, "one"), tasks.create(session, "two")
        assert first.id is not None and second.id is not None
        cursor = tasks.list_page(session, limit=1).next_cursor
        tasks.list_page(session, completed=False, after=cursor, limit=1)
        tasks.get(session, first.id)
        tasks.update(session, first.id, title="uno")
        tasks.toggle(session, first.id)
        tasks.count_open(session)
        tasks.delete(session, second.id)

    with scoped_session(app_engine, alice) as session:
        sent = statements_sent(session, everything)
    assert len(sent) == 9
    assert_filtered_by_user(sent, alice)


# Its own database: which plan serves the list depends on the table's page and row counts,
# and an ANALYZE in another test's rolled-back transaction on the shared database still
# leaves those (test_check_statistics); there it chose a plan that sorts, once in a full run.
@pytest.mark.own_database
@pytest.mark.parametrize("completed", [None, False])
def test_list_page_is_an_index_range_scan_without_sorting(
    app_engine: Engine, alice: str, completed: bool | None
) -> None:
    create_committed(app_engine, alice, "a", "b", "c")
    with scoped_session(app_engine, alice) as session:
        cursor = tasks.list_page(session, completed=completed, limit=1).next_cursor
        plan = plan_of(session, lambda s: tasks.list_page(s, completed=completed, after=cursor))
    # Which of the two task indexes serves the filtered list is the planner's call (it
    # depends on statistics); either way the cursor must bound the scan, not filter it.
    assert "Index Scan Backward using ix_task_user_id_" in plan, plan
    assert "ROW(created_at, id) < ROW(" in index_condition(plan), plan
    assert "Sort" not in plan, plan


def test_cursor_round_trips_and_forgeries_are_refused() -> None:
    at, row_id = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid.uuid4()
    cursor = encode_cursor("task", at, row_id)
    assert decode_cursor("task", cursor) == (at, row_id)
    naive = encode_cursor("task", at.replace(tzinfo=None), row_id)
    forgeries = [
        cursor[:-3],  # truncated
        cursor + "!",  # outside the alphabet
        "x" * 1000,  # oversized
        encode_cursor("conversation", at, row_id),  # another list's cursor
        naive,  # a naive time would be read in the server's time zone
        "W10",  # base64 of "[]"
        "",
    ]
    for forged in forgeries:
        with pytest.raises(InvalidInputError, match="not a task cursor"):
            decode_cursor("task", forged)


def test_title_rule_refuses_every_character_the_check_calls_blank(
    connect_app: Connect,
) -> None:
    with connect_app() as conn:
        # Every code point the CHECK's regex \S does not match (surrogates cannot be text).
        rows = conn.execute(
            "select n from generate_series(1, 1114111) n"
            " where (n < 55296 or n > 57343) and pg_catalog.chr(n) !~ '\\S'"
        ).fetchall()
    assert len(rows) >= 6  # at least the ASCII white space, so the query did find some
    assert all(chr(n).isspace() for (n,) in rows)


async def test_async_session_runs_the_dal_through_run_sync(
    app_async_engine: AsyncEngine, app_engine: Engine, alice: str, bob: str
) -> None:
    async with scoped_async_session(app_async_engine, alice) as session:
        task = await session.run_sync(tasks.create, title="from asyncio")
        assert task.id is not None
        toggled = await session.run_sync(tasks.toggle, task.id)
        page = await session.run_sync(tasks.list_page, limit=5)
        # Loaded attributes read without IO: the DAL leaves nothing expired behind.
        assert toggled is task and task.completed is True
        assert [t.id for t in page.items] == [task.id]
        task_id = task.id
        await session.commit()
    assert snapshot(app_engine, alice, task_id)["completed"] is True
    async with scoped_async_session(app_async_engine, bob) as session:
        with pytest.raises(NotFoundError):
            await session.run_sync(tasks.get, task_id)
