"""A concurrent isolation workload: many users, threads and asyncio tasks, every read checked.

Each worker acts as one user. Each of its scoped transactions inserts a task and then reads,
in one statement, the transaction's ``app.user_id``, the server backend serving it, whether the
new row is visible (the positive control) and the owners of every task it can see. A leak is
any transaction that saw another owner, carried another user id, or could not see its own new
row; every ``unscoped_every``-th step a worker also runs an unscoped transaction, which must see
no task at all. The same code backs tests/test_concurrency.py and ``todo-rls stress``.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from todo_rls.engine import EngineSettings, create_async_engine, create_engine
from todo_rls.errors import InvalidInputError
from todo_rls.session import scoped_async_session, scoped_session
from todo_rls.stress.plan import StressPlan, StressResult
from todo_rls.stress.recorder import Recorder

_INSERT = text("insert into public.task (user_id, title) values (:user_id, :title) returning id")
# One round trip for every fact the check needs; array() of distinct owners keeps it small.
_OBSERVE = text("""
select pg_catalog.current_setting('app.user_id', true) as guc,
       pg_catalog.pg_backend_pid() as pid,
       exists (select from public.task where id = :new_id) as sees_new_row,
       array(select distinct user_id from public.task) as owners
""")
_OBSERVE_UNSCOPED = text("""
select pg_catalog.current_setting('app.user_id', true) as guc,
       pg_catalog.pg_backend_pid() as pid,
       array(select distinct user_id from public.task) as owners
""")


def _title(user_id: str, step: int) -> str:
    return f"stress {user_id[:8]} #{step}"


def _unscoped_sync(engine: Engine, recorder: Recorder) -> None:
    conn: Connection
    with engine.connect() as conn, conn.begin():
        recorder.unscoped(conn.execute(_OBSERVE_UNSCOPED).one())


def _thread_worker(engine: Engine, plan: StressPlan, worker: int, recorder: Recorder) -> None:
    user_id = plan.users[worker % len(plan.users)]
    for step in range(plan.share(worker)):
        try:
            with scoped_session(engine, user_id) as session:
                conn = session.connection()  # begins, and so scopes, the transaction
                params = {"user_id": user_id, "title": _title(user_id, step)}
                new_id = conn.execute(_INSERT, params).scalar_one()
                row = conn.execute(_OBSERVE, {"new_id": new_id}).one()
                session.commit()
            recorder.scoped(user_id, row, new_id)
            if step % plan.unscoped_every == 0:
                _unscoped_sync(engine, recorder)
        except Exception as error:  # counted and sampled: the run reports, the caller decides
            recorder.error(error)


async def _unscoped_async(engine: AsyncEngine, recorder: Recorder) -> None:
    async with engine.connect() as conn, conn.begin():
        recorder.unscoped((await conn.execute(_OBSERVE_UNSCOPED)).one())


async def _task_worker(
    engine: AsyncEngine, plan: StressPlan, worker: int, recorder: Recorder
) -> None:
    user_id = plan.users[worker % len(plan.users)]
    for step in range(plan.share(worker)):
        try:
            async with scoped_async_session(engine, user_id) as session:
                conn = await session.connection()  # begins, and so scopes, the transaction
                params = {"user_id": user_id, "title": _title(user_id, step)}
                new_id = (await conn.execute(_INSERT, params)).scalar_one()
                row = (await conn.execute(_OBSERVE, {"new_id": new_id})).one()
                await session.commit()
            recorder.scoped(user_id, row, new_id)
            if step % plan.unscoped_every == 0:
                await _unscoped_async(engine, recorder)
        except Exception as error:  # counted and sampled, as in _thread_worker
            recorder.error(error)


async def _run_tasks(engine: AsyncEngine, plan: StressPlan, recorder: Recorder) -> None:
    try:
        workers = range(plan.threads, plan.threads + plan.tasks)  # numbered after the threads
        await asyncio.gather(*(_task_worker(engine, plan, w, recorder) for w in workers))
    finally:
        await engine.dispose()


def _preflight(engine: Engine, user_id: str) -> None:
    """One rolled-back step, so a wrong URL, role or user fails once, loudly, before the run."""
    with scoped_session(engine, user_id) as session:
        try:
            session.connection().execute(_INSERT, {"user_id": user_id, "title": "preflight"})
        except IntegrityError as error:
            raise InvalidInputError(
                f'user {user_id!r} is not in the "user" table of the database the URL names: '
                "create the users there (the stress command's --admin-url must name the same "
                "database as --url)"
            ) from error
        session.rollback()


def run_stress(url: str, plan: StressPlan, *, pgbouncer: bool | None = None) -> StressResult:
    """Run plan against url (an application role's URL) and return what it found.

    Threads share one sync engine, asyncio tasks one async engine on an event loop of their
    own thread, both running at the same time. pgbouncer=True turns off server-side prepared
    statements, as a transaction-mode PgBouncer before 1.21 needs (None: detect Neon -pooler).
    """
    settings = EngineSettings(
        pgbouncer=pgbouncer, pool_size=plan.pool_size, max_overflow=0, pool_timeout=60
    )
    recorder = Recorder()
    engine = create_engine(url, settings)
    async_engine = create_async_engine(url, settings)
    started = time.perf_counter()
    try:
        _preflight(engine, plan.users[0])
        with ThreadPoolExecutor(max_workers=plan.threads + 1) as pool:
            futures = [
                pool.submit(_thread_worker, engine, plan, w, recorder) for w in range(plan.threads)
            ]
            if plan.tasks:
                futures.append(pool.submit(asyncio.run, _run_tasks(async_engine, plan, recorder)))
            for future in futures:
                future.result()
    finally:
        engine.dispose()
    result = recorder.result
    result.elapsed = time.perf_counter() - started
    result.users = len({plan.users[w % len(plan.users)] for w in range(plan.threads + plan.tasks)})
    result.threads, result.tasks = plan.threads, plan.tasks
    result.backends = len(recorder.served)
    result.shared_backends = sum(1 for users in recorder.served.values() if len(users - {""}) > 1)
    return result
