"""A concurrent isolation workload: many users, threads and asyncio tasks, every read checked.

Each worker acts as one user. Each of its scoped transactions inserts a task and then reads,
in one statement, the transaction's ``app.user_id``, the server backend serving it, whether the
new row is visible (the positive control) and the owners of every task it can see. A leak is
any transaction that saw another owner, carried another user id, or could not see its own new
row; every ``unscoped_every``-th step a worker also runs an unscoped transaction, which must see
no task at all. The same code backs tests/test_concurrency.py and ``todo-rls stress``.
"""

import argparse
import asyncio
import json
import os
import secrets
import string
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from todo_rls.engine import EngineSettings, create_async_engine, create_engine, database_url
from todo_rls.errors import DatabaseUrlError, InvalidInputError
from todo_rls.session import scoped_async_session, scoped_session

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
_MAX_SAMPLES = 10
ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True)
class StressPlan:
    """How much work to run: users are shared round-robin by threads + tasks workers."""

    users: Sequence[str]
    threads: int = 16
    tasks: int = 64
    transactions: int = 10_000
    unscoped_every: int = 10
    pool_size: int = 8  # per engine; behind PgBouncer it is client connections, not servers

    def __post_init__(self) -> None:
        if not self.users:
            raise InvalidInputError("a stress run needs at least one user id")
        if self.threads < 0 or self.tasks < 0 or self.threads + self.tasks == 0:
            raise InvalidInputError("threads and tasks must be >= 0 and not both 0")
        if self.transactions < 1 or self.unscoped_every < 1 or self.pool_size < 1:
            raise InvalidInputError("transactions, unscoped_every and pool_size must be >= 1")

    def share(self, worker: int) -> int:
        """Scoped transactions of worker: the total split evenly, remainder to the first."""
        workers = self.threads + self.tasks
        return self.transactions // workers + (worker < self.transactions % workers)


@dataclass
class StressResult:
    """What a run did and found; leaks must be 0, errors counts exceptions raised."""

    transactions: int = 0  # scoped transactions committed and checked
    unscoped: int = 0  # unscoped transactions checked
    users: int = 0
    threads: int = 0
    tasks: int = 0
    leaks: int = 0
    errors: int = 0
    elapsed: float = 0.0
    backends: int = 0  # distinct server backends (pg_backend_pid) that served the run
    shared_backends: int = 0  # backends that served more than one user
    samples: list[str] = field(default_factory=list)  # first leaks and errors, for the report

    def summary(self) -> str:
        """One line of counts, for test output and the command."""
        return (
            f"{self.transactions} scoped + {self.unscoped} unscoped transactions, "
            f"{self.users} users, {self.threads} threads, {self.tasks} asyncio tasks, "
            f"{self.backends} backends ({self.shared_backends} served >1 user), "
            f"leaks={self.leaks}, errors={self.errors}, {self.elapsed:.1f} s"
        )


class _Recorder:
    """Thread-safe tally shared by every worker of one run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result = StressResult()
        self.served: dict[int, set[str]] = {}

    def scoped(self, user_id: str, row: Any, new_id: object) -> None:
        problems = []
        if row.guc != user_id:
            problems.append(f"app.user_id was {row.guc!r}")
        if not row.sees_new_row:
            problems.append(f"its own new task {new_id} was invisible")
        foreign = sorted(set(row.owners) - {user_id})
        if foreign:
            problems.append(f"saw tasks of {foreign}")
        with self.lock:
            self.result.transactions += 1
            self.served.setdefault(int(row.pid), set()).add(user_id)
            if problems:
                self._leak(f"user {user_id} on backend {row.pid}: " + "; ".join(problems))

    def unscoped(self, row: Any) -> None:
        with self.lock:
            self.result.unscoped += 1
            self.served.setdefault(int(row.pid), set()).add("")
            if row.guc not in (None, "") or row.owners:
                self._leak(
                    f"unscoped transaction on backend {row.pid}: app.user_id {row.guc!r}, "
                    f"saw tasks of {sorted(row.owners)}"
                )

    def error(self, error: BaseException) -> None:
        with self.lock:
            self.result.errors += 1
            self._sample(f"error: {type(error).__name__}: {' '.join(str(error).split())[:300]}")

    def _leak(self, message: str) -> None:
        self.result.leaks += 1
        self._sample(f"leak: {message}")

    def _sample(self, message: str) -> None:
        if len(self.result.samples) < _MAX_SAMPLES:
            self.result.samples.append(message)


def _title(user_id: str, step: int) -> str:
    return f"stress {user_id[:8]} #{step}"


def _unscoped_sync(engine: Engine, recorder: _Recorder) -> None:
    conn: Connection
    with engine.connect() as conn, conn.begin():
        recorder.unscoped(conn.execute(_OBSERVE_UNSCOPED).one())


def _thread_worker(engine: Engine, plan: StressPlan, worker: int, recorder: _Recorder) -> None:
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


async def _unscoped_async(engine: AsyncEngine, recorder: _Recorder) -> None:
    async with engine.connect() as conn, conn.begin():
        recorder.unscoped((await conn.execute(_OBSERVE_UNSCOPED)).one())


async def _task_worker(
    engine: AsyncEngine, plan: StressPlan, worker: int, recorder: _Recorder
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


async def _run_tasks(engine: AsyncEngine, plan: StressPlan, recorder: _Recorder) -> None:
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
    recorder = _Recorder()
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


# --- the todo-rls stress command -----------------------------------------------------------


def _new_user_id() -> str:
    """An id shaped like Better Auth's: 32 alphanumeric characters."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(32))


def _admin_conninfo(admin_url: str) -> str:
    return database_url(admin_url).set(drivername="postgresql").render_as_string(False)


def create_stress_users(admin_url: str, count: int) -> list[str]:
    """Insert count throwaway users into Better Auth's "user" table; returns their ids."""
    ids = [_new_user_id() for _ in range(count)]
    with psycopg.connect(_admin_conninfo(admin_url)) as conn:
        conn.cursor().executemany(
            'insert into public."user" (id, name, email, "emailVerified") '
            "values (%s, %s, %s, true)",
            [(i, f"todo-rls stress {i[:6]}", f"{i}@stress.todo-rls.invalid") for i in ids],
        )
    return ids


def delete_stress_users(admin_url: str, ids: Sequence[str]) -> None:
    """Delete the users again; their tasks go with them (on delete cascade)."""
    with psycopg.connect(_admin_conninfo(admin_url)) as conn:
        conn.execute('delete from public."user" where id = any(%s)', (list(ids),))


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a count >= 0")
    return number


def _positive(value: str) -> int:
    number = _count(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `todo-rls stress`."""
    parser.add_argument(
        "--url",
        help="application URL (default: $DATABASE_URL): a login role that is a member of "
        "todo_app, never a superuser or table owner; may be a PgBouncer or Neon -pooler URL",
    )
    parser.add_argument(
        "--admin-url",
        required=True,
        help='URL allowed to insert into and delete from "user" (the same database as --url): '
        "the run creates its throwaway users there and deletes them, and their tasks, after",
    )
    parser.add_argument("--users", type=_positive, default=80, help="distinct users (default: 80)")
    parser.add_argument("--threads", type=_count, default=16, help="threads (default: 16)")
    parser.add_argument("--tasks", type=_count, default=64, help="asyncio tasks (default: 64)")
    parser.add_argument(
        "--transactions",
        type=_positive,
        default=100_000,
        help="scoped transactions in total (default: 100000)",
    )
    parser.add_argument(
        "--pool-size", type=_positive, default=8, help="connections per engine (default: 8)"
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="the URL is a transaction-mode PgBouncer: turn off server-side prepared statements "
        "(automatic for Neon -pooler hosts)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_command(args: argparse.Namespace) -> int:
    """`todo-rls stress`: 0 when every transaction ran and none leaked, else 1."""
    url = args.url or os.environ.get("DATABASE_URL")
    if not url:
        raise DatabaseUrlError(
            "no application URL: pass --url URL or export "
            "DATABASE_URL=postgresql://USER:PASSWORD@HOST/DBNAME"
        )
    users = create_stress_users(args.admin_url, args.users)
    try:
        plan = StressPlan(
            users=users,
            threads=args.threads,
            tasks=args.tasks,
            transactions=args.transactions,
            pool_size=args.pool_size,
        )
        result = run_stress(url, plan, pgbouncer=args.pgbouncer or None)
    finally:
        delete_stress_users(args.admin_url, users)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(f"todo-rls stress: {result.summary()}")
        for sample in result.samples:
            print(f"  {sample}")
    # An error is not a leak, but a transaction that failed proved nothing: the run must be whole.
    whole = result.errors == 0 and result.transactions == args.transactions
    return 0 if result.leaks == 0 and whole else 1
