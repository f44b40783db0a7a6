"""The query patterns the app runs, each as (a) the app's way and (b) hand-filtered SQL.

(a) runs the data-access functions in todo_rls.scoped_session as a login role RLS binds.
(a') is (a) minus the wrapper's role check: the same functions as the app role, in a Session
that opens each transaction with one message `BEGIN; SELECT set_config('app.user_id', ...)`
and nothing else, so (a) - (a') is what the check costs and (a') - (b) what the policies cost.
(b) runs the very same functions, hence the very same SQL (they filter by user_id explicitly
on top of RLS), in a plain Session as a BYPASSRLS role: no wrapper, no policy. The wrapper
refuses BYPASSRLS roles, so (b) never goes through it.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import generators, pq, sql
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session

from todo_rls import chat, tasks
from todo_rls.bench.subjects import Subject
from todo_rls.session import _SCOPE_KEY, Scope, scoped_session

Run = Callable[[Session, Subject], object]


@dataclass(frozen=True)
class Pattern:
    """One request shape; commit=False rolls back (delete), so every run finds the same data."""

    name: str
    run: Run
    commit: bool = True


PATTERNS = (
    Pattern("list first page", lambda s, u: tasks.list_page(s)),
    Pattern("list deep page", lambda s, u: tasks.list_page(s, after=u.deep_cursor)),
    Pattern("list open tasks", lambda s, u: tasks.list_page(s, completed=False)),
    Pattern("get by id", lambda s, u: tasks.get(s, u.task_id)),
    Pattern("count open", lambda s, u: tasks.count_open(s)),
    Pattern("toggle", lambda s, u: tasks.toggle(s, u.task_id)),
    Pattern("update title", lambda s, u: tasks.update(s, u.task_id, title="Renamed by bench")),
    Pattern("delete", lambda s, u: tasks.delete(s, u.task_id), commit=False),
    Pattern("list conversations", lambda s, u: chat.list_conversations(s)),
    Pattern("page of messages", lambda s, u: chat.list_messages(s, u.conversation_id)),
)


@contextmanager
def explicit_session(engine: Engine, user_id: str) -> Iterator[Session]:
    """(b): a plain Session that carries user_id where the DAL reads it, with no scoping."""
    # current_user_id() reads session.info; nothing here sets app.user_id or checks the role.
    with Session(engine, info={_SCOPE_KEY: Scope(user_id)}) as session:
        yield session


_BEGIN_AND_SET_USER = sql.SQL("begin; select pg_catalog.set_config('app.user_id', {}, true)")


class _SetUserOnlySession(Session):
    """(a'): scoped by a bare set_config in the message that opens the transaction."""


@event.listens_for(_SetUserOnlySession, "after_begin")
def _set_user(session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
    raw: Any = connection.connection.dbapi_connection
    scope: Scope = session.info[_SCOPE_KEY]
    query = _BEGIN_AND_SET_USER.format(sql.Literal(scope.user_id)).as_bytes(raw)
    with raw.lock:  # as todo_rls.session does: psycopg then skips its own BEGIN
        raw.pgconn.send_query(query)
        results = raw.wait(generators.execute(raw.pgconn))
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=raw.info.encoding)


@contextmanager
def set_user_only_session(engine: Engine, user_id: str) -> Iterator[Session]:
    """(a'): RLS as the app role, scoped without the wrapper's role check."""
    with _SetUserOnlySession(engine, info={_SCOPE_KEY: Scope(user_id)}) as session:
        yield session


def run_once(pattern: Pattern, session: Session, subject: Subject) -> None:
    """One request: the pattern, then COMMIT (or ROLLBACK for a delete)."""
    pattern.run(session, subject)
    if pattern.commit:
        session.commit()
    else:
        session.rollback()


def run_scoped(engine: Engine, pattern: Pattern, subject: Subject) -> None:
    """(a): one request the app's way, through the wrapper."""
    with scoped_session(engine, subject.user_id) as session:
        run_once(pattern, session, subject)


def run_set_user_only(engine: Engine, pattern: Pattern, subject: Subject) -> None:
    """(a'): the request as the app role with RLS, minus the wrapper's role check."""
    with set_user_only_session(engine, subject.user_id) as session:
        run_once(pattern, session, subject)


def run_explicit(engine: Engine, pattern: Pattern, subject: Subject) -> None:
    """(b): the same request as hand-filtered SQL on a BYPASSRLS connection."""
    with explicit_session(engine, subject.user_id) as session:
        run_once(pattern, session, subject)
