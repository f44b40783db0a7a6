"""The ways a request is sent in one bench run, each on an engine of its own.

- scoped: the app's way. todo_rls's engine, scoped_session, the run's app login (a member of
  todo_app that RLS binds): BEGIN + begin_scope with the signed context in one pipeline batch,
  policies calling the verifier.
- set_config: the same login, policies and signed context, but the transaction is opened by one
  simple-query message `BEGIN; select set_config('app.user_id', ...), set_config('app.user_sig',
  ...)` on a plain SQLAlchemy engine: no begin_scope (no RESET ALL, no prepared-statement check,
  no search_path pinning), no role check, none of the wrapper's Python. scoped minus set_config
  is what the wrapper costs; set_config minus plain what the policies and the verifier cost.
- plain: the hand-filtered baseline. A plain SQLAlchemy engine (same pool options, no hook) as
  the run's BYPASSRLS login: the same SQL, no policy, no scoping.
Each with psycopg's server-side prepared statements on (prepare_threshold 5, the default on a
direct connection) and off (prepare_threshold None: TODO_RLS_PREPARED_STATEMENTS=off, PgBouncer
before 1.21, and the answer to prepared-statement hijack that needs no check per transaction).
With --policy-forms, scoped also runs on a copy of the database whose policies hold the bare
predicate Citus accepts (policyforms.py).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from psycopg import errors, pq, sql
from sqlalchemy import URL, Connection, Engine, event
from sqlmodel import Session

from todo_rls.bench.patterns import Pattern, explicit_session, run_once
from todo_rls.bench.setup import render
from todo_rls.bench.subjects import Subject
from todo_rls.engine import EngineSettings, create_engine, database_url
from todo_rls.identity import DEFAULT_CONTEXT_TTL_SECONDS, SigningKey
from todo_rls.session import _SCOPE_INFO_KEY, Scope, scoped_session


@dataclass(frozen=True)
class Side:
    """One way of sending every request: scoped, set_config or plain; prepared or not."""

    name: str
    way: str
    prepared: bool
    bare_form: bool = False  # on the copy whose policies hold the Citus-accepted predicate


SCOPED = Side("scoped", "scoped", prepared=True)
SCOPED_UNPREPARED = Side("scoped_unprepared", "scoped", prepared=False)
SET_CONFIG = Side("set_config", "set_config", prepared=True)
PLAIN = Side("plain", "plain", prepared=True)
PLAIN_UNPREPARED = Side("plain_unprepared", "plain", prepared=False)
BARE = Side("bare", "scoped", prepared=True, bare_form=True)
BARE_UNPREPARED = Side("bare_unprepared", "scoped", prepared=False, bare_form=True)

PATTERN_SIDES = (SCOPED, SCOPED_UNPREPARED, SET_CONFIG, PLAIN, PLAIN_UNPREPARED)
POLICY_FORM_SIDES = (BARE, BARE_UNPREPARED)

# The execution option that carries the user to the set_config side's begin hook.
_USER_OPTION = "todo_rls_bench_user"


@dataclass(frozen=True)
class Targets:
    """Where each side connects: the run's logins, and the bare-form copy if there is one."""

    app_url: URL
    bypass_url: URL
    bare_database: str | None = None

    def url(self, side: Side) -> URL:
        if side.way == "plain":
            return self.bypass_url
        if side.bare_form:
            if self.bare_database is None:
                raise ValueError("no bare-form copy in this run (--policy-forms)")
            return self.app_url.set(database=self.bare_database)
        return self.app_url


def _settings(connections: int, prepared: bool) -> EngineSettings:
    return EngineSettings(pool_size=connections, max_overflow=0, prepared_statements=prepared)


def plain_engine(url: URL, connections: int = 1, prepared: bool = True) -> Engine:
    """SQLAlchemy's own engine with the library's pool options and no todo_rls hook."""
    parsed = database_url(render(url))
    options = _settings(connections, prepared).engine_options(parsed)
    return sqlalchemy.create_engine(parsed, **options)


def _set_config_hook(engine: Engine, key: SigningKey) -> None:
    """Open each transaction with one simple-query message that sets the signed context."""

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        user_id = connection.get_execution_options()[_USER_OPTION]
        raw: Any = connection.connection.dbapi_connection
        message = sql.SQL(
            "begin; select pg_catalog.set_config('app.user_id', {}, true), "
            "pg_catalog.set_config('app.user_sig', {}, true)"
        ).format(sql.Literal(user_id), sql.Literal(key.sign(user_id, DEFAULT_CONTEXT_TTL_SECONDS)))
        # Straight to libpq: psycopg then finds the transaction open and sends no BEGIN itself.
        result = raw.pgconn.exec_(message.as_bytes(raw))
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise errors.error_from_result(result, encoding=raw.info.encoding)


def side_engine(targets: Targets, side: Side, key: SigningKey, connections: int = 1) -> Engine:
    """The engine side sends its requests on, with `connections` pooled connections."""
    url = targets.url(side)
    if side.way == "scoped":
        return create_engine(render(url), _settings(connections, side.prepared))
    engine = plain_engine(url, connections, side.prepared)
    if side.way == "set_config":
        _set_config_hook(engine, key)
    return engine


Request = Callable[[int], object]


def request(
    side: Side, engine: Engine, key: SigningKey, pattern: Pattern, subjects: list[Subject]
) -> Request:
    """The i-th request of pattern on side, acting for the i-th subject (cycling)."""

    def scoped(i: int) -> None:
        subject = subjects[i % len(subjects)]
        with scoped_session(engine, subject.user_id) as session:
            run_once(pattern, session, subject)

    def set_config(i: int) -> None:
        subject = subjects[i % len(subjects)]
        bind = engine.execution_options(**{_USER_OPTION: subject.user_id})
        with Session(bind, info={_SCOPE_INFO_KEY: Scope(subject.user_id, key)}) as session:
            run_once(pattern, session, subject)

    def plain(i: int) -> None:
        subject = subjects[i % len(subjects)]
        with explicit_session(engine, subject.user_id) as session:
            run_once(pattern, session, subject)

    return {"scoped": scoped, "set_config": set_config, "plain": plain}[side.way]


@contextmanager
def engines(
    targets: Targets, sides: tuple[Side, ...], key: SigningKey, connections: int = 1
) -> Iterator[dict[Side, Engine]]:
    """An engine per side, disposed at the end."""
    made: dict[Side, Engine] = {}
    try:
        for side in sides:
            made[side] = side_engine(targets, side, key, connections)
        yield made
    finally:
        for engine in made.values():
            engine.dispose()
