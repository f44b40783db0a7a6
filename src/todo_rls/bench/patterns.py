"""The query patterns the app runs, each as the app's way (scoped) and as hand-filtered SQL.

Scoped runs the data-access functions in todo_rls.scoped_session as a login role RLS binds:
every transaction opened by the wrapper (BEGIN + begin_scope, signed context), every policy
calling the verifier. Plain runs the very same functions, hence the very same SQL (they filter
by user_id explicitly on top of RLS), in a plain Session on a plain SQLAlchemy engine as a
BYPASSRLS role: no wrapper, no policy. The wrapper refuses BYPASSRLS roles, so plain never
goes through it.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session

from todo_rls import chat, tasks
from todo_rls.bench.subjects import Subject
from todo_rls.identity import SigningKey
from todo_rls.session import _SCOPE_INFO_KEY, Scope, scoped_session

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


# The plain side never signs or sends its Scope; a throwaway key satisfies the type.
_UNUSED_KEY = SigningKey(os.urandom(32))


@contextmanager
def explicit_session(engine: Engine, user_id: str) -> Iterator[Session]:
    """A plain Session that carries user_id where the DAL reads it, with no scoping."""
    # current_user_id() reads session.info; nothing here sets app.user_id or checks the role.
    with Session(engine, info={_SCOPE_INFO_KEY: Scope(user_id, _UNUSED_KEY)}) as session:
        yield session


def run_once(pattern: Pattern, session: Session, subject: Subject) -> None:
    """One request: the pattern, then COMMIT (or ROLLBACK for a delete)."""
    pattern.run(session, subject)
    if pattern.commit:
        session.commit()
    else:
        session.rollback()


def run_scoped(engine: Engine, pattern: Pattern, subject: Subject) -> None:
    """One request the app's way, through the wrapper."""
    with scoped_session(engine, subject.user_id) as session:
        run_once(pattern, session, subject)


def run_explicit(engine: Engine, pattern: Pattern, subject: Subject) -> None:
    """The same request as hand-filtered SQL on a BYPASSRLS connection."""
    with explicit_session(engine, subject.user_id) as session:
        run_once(pattern, session, subject)
