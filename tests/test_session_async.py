"""scoped_async_session: the asyncio twin binds every transaction to one user, nothing more."""

from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

import todo_rls
from todo_rls import (
    EngineSettings,
    Task,
    UnsafeRoleError,
    scoped_async_session,
)
from todo_rls.session import current_user_id

from fix_db import APP_LOGIN, BYPASS_LOGIN, LOGIN_PASSWORD
from fix_server import PgServer

PROBE = text(
    "select current_user::text as role, row_security_active('public.task') as rls, "
    "current_setting('app.user_id', true) as user_id, pg_backend_pid() as pid"
)
ALICE_TITLES = {"alice: buy milk", "alice: call mom"}
BOB_TITLES = {"bob: fix bike"}


class Probe(NamedTuple):
    """What the server says about the transaction a session is in."""

    role: str
    rls: bool
    user_id: str | None
    pid: int


async def probe(session: AsyncSession) -> Probe:
    """Role, RLS state, app.user_id and backend pid, inside session's current transaction."""
    row = (await (await session.connection()).execute(PROBE)).one()
    return Probe(row.role, row.rls, row.user_id, row.pid)


async def visible_titles(session: AsyncSession) -> set[str]:
    return set((await session.exec(select(Task.title))).all())


async def add_tasks(engine: AsyncEngine, user_id: str, *titles: str) -> None:
    """Create titles as user_id's tasks, through user_id's own scoped session."""
    async with scoped_async_session(engine, user_id) as session:
        session.add_all(Task(user_id=user_id, title=title) for title in titles)
        await session.commit()


async def assert_scoped_to(session: AsyncSession, user_id: str, titles: set[str]) -> Probe:
    """The session's transaction runs as the app role, with RLS on, for user_id only."""
    state = await probe(session)
    assert (state.role, state.rls, state.user_id) == (APP_LOGIN, True, user_id)
    assert await visible_titles(session) == titles
    return state


async def assert_unscoped(session: AsyncSession) -> Probe:
    """A plain AsyncSession on a reused connection: RLS on, no user, so no rows."""
    state = await probe(session)
    assert (state.role, state.rls) == (APP_LOGIN, True)
    assert state.user_id in ("", None)
    assert await visible_titles(session) == set()
    return state


@pytest.fixture
async def seeded(app_async_engine: AsyncEngine, alice: str, bob: str) -> None:
    """alice and bob each own tasks, created through their own scoped sessions."""
    await add_tasks(app_async_engine, alice, *ALICE_TITLES)
    await add_tasks(app_async_engine, bob, *BOB_TITLES)


@pytest.fixture
async def one_connection_engine(app_url: str) -> AsyncIterator[AsyncEngine]:
    """The library's async engine with a single pooled connection, so every session reuses it."""
    engine = todo_rls.create_async_engine(app_url, EngineSettings(pool_size=1, max_overflow=0))
    yield engine
    await engine.dispose()


@pytest.mark.usefixtures("seeded")
async def test_scoped_async_session_sees_only_own_rows(
    app_async_engine: AsyncEngine, alice: str, bob: str
) -> None:
    async with scoped_async_session(app_async_engine, alice) as session:
        await assert_scoped_to(session, alice, ALICE_TITLES)
        assert current_user_id(session.sync_session) == alice
    async with scoped_async_session(app_async_engine, bob) as session:
        await assert_scoped_to(session, bob, BOB_TITLES)


@pytest.mark.usefixtures("seeded")
async def test_async_transactions_after_commit_and_rollback_are_scoped(
    app_async_engine: AsyncEngine, alice: str
) -> None:
    async with scoped_async_session(app_async_engine, alice) as session:
        await assert_scoped_to(session, alice, ALICE_TITLES)
        await session.commit()
        await assert_scoped_to(session, alice, ALICE_TITLES)
        await session.rollback()
        await assert_scoped_to(session, alice, ALICE_TITLES)
        with pytest.raises(DBAPIError, match="division by zero"):
            await (await session.connection()).execute(text("select 1 / 0"))
        await session.rollback()
        await assert_scoped_to(session, alice, ALICE_TITLES)


@pytest.mark.usefixtures("seeded")
async def test_async_pooled_connection_carries_nothing_between_users(
    one_connection_engine: AsyncEngine, alice: str, bob: str
) -> None:
    engine = one_connection_engine
    # Each scoped session commits, as a request does: a rollback would hide a session-level SET.
    async with scoped_async_session(engine, alice) as session:
        pid = (await assert_scoped_to(session, alice, ALICE_TITLES)).pid
        await session.commit()
    async with scoped_async_session(engine, bob) as session:
        assert (await assert_scoped_to(session, bob, BOB_TITLES)).pid == pid
        await session.commit()
    async with AsyncSession(engine) as session:
        assert (await assert_unscoped(session)).pid == pid
    async with scoped_async_session(engine, alice) as session:
        assert (await assert_scoped_to(session, alice, ALICE_TITLES)).pid == pid
        await session.rollback()
    async with AsyncSession(engine) as session:
        assert (await assert_unscoped(session)).pid == pid


async def test_async_bypassrls_role_is_refused_and_nothing_is_read_or_written(
    app_async_engine: AsyncEngine, pg_server: PgServer, dbname: str, alice: str
) -> None:
    await add_tasks(app_async_engine, alice, *ALICE_TITLES)
    async with scoped_async_session(app_async_engine, alice) as session:
        await assert_scoped_to(session, alice, ALICE_TITLES)
    url = pg_server.url(dbname, user=BYPASS_LOGIN, password=LOGIN_PASSWORD)
    engine = todo_rls.create_async_engine(url.render_as_string(hide_password=False))
    try:
        async with scoped_async_session(engine, alice) as session:
            session.add(Task(user_id=alice, title="written by an unsafe role"))
            with pytest.raises(UnsafeRoleError, match="has BYPASSRLS"):
                await session.commit()
        async with scoped_async_session(engine, alice) as session:
            with pytest.raises(UnsafeRoleError, match="has BYPASSRLS"):
                await session.exec(select(Task))
    finally:
        await engine.dispose()
    async with scoped_async_session(app_async_engine, alice) as session:
        await assert_scoped_to(session, alice, ALICE_TITLES)


async def test_async_superuser_is_refused(pg_server: PgServer, dbname: str, alice: str) -> None:
    url = pg_server.url(dbname).render_as_string(hide_password=False)
    engine = todo_rls.create_async_engine(url)
    try:
        async with scoped_async_session(engine, alice) as session:
            with pytest.raises(UnsafeRoleError, match="is a superuser"):
                await session.exec(select(Task))
    finally:
        await engine.dispose()
