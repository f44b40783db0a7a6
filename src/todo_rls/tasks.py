"""The session user's tasks: create, get, list a page, update, toggle, delete, count open ones.

Every function takes a session from todo_rls.scoped_session (or the sync session inside
``await async_session.run_sync(tasks.create, title=...)``), flushes and never commits: the caller
owns the unit of work. Queries filter by user_id as well as relying on row-level security, and
another user's task is reported exactly like a missing one.
"""

import enum
import uuid
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from todo_rls.errors import InvalidInputError
from todo_rls.models import Task
from todo_rls.owned_rows import delete_owned, get_owned, update_owned, user_must_exist
from todo_rls.pagination import Page, fetch_page
from todo_rls.session import current_user_id
from todo_rls.validation import check_text, check_title, parse_id


class Unset(enum.Enum):
    """Type of UNSET, which marks an argument "not given" where None means "clear it"."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


def _check_description(value: object) -> str | None:
    return None if value is None else check_text(value, "description")


def _check_completed(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"completed must be True or False, not {value!r:.80}")
    return value


def create(session: Session, title: str, description: str | None = None) -> Task:
    """Insert a task for the session's user; id and timestamps come back from the server."""
    task = Task(
        user_id=current_user_id(session),
        title=check_title(title),
        description=_check_description(description),
    )
    session.add(task)
    with user_must_exist(session):
        session.flush()
    return task


def get(session: Session, task_id: uuid.UUID | str) -> Task:
    """The session user's task task_id, or NotFoundError."""
    return get_owned(session, Task, parse_id(task_id, "task"))


def list_page(
    session: Session,
    *,
    completed: bool | None = None,
    after: str | None = None,
    limit: int = 20,
) -> Page[Task]:
    """A page of the user's tasks, newest first; limit outside 1..100 raises InvalidInputError."""
    statement = sa.select(Task).where(col(Task.user_id) == current_user_id(session))
    if completed is not None:
        statement = statement.where(col(Task.completed) == _check_completed(completed))
    return fetch_page(
        session, statement, Task, order_by="created_at", descending=True, after=after, limit=limit
    )


def update(
    session: Session,
    task_id: uuid.UUID | str,
    *,
    title: str | Unset = UNSET,
    description: str | Unset | None = UNSET,
    completed: bool | Unset = UNSET,
) -> Task:
    """Change the given fields of a task in one UPDATE; description=None clears it."""
    values: dict[str, Any] = {}
    if not isinstance(title, Unset):
        values["title"] = check_title(title)
    if not isinstance(description, Unset):
        values["description"] = _check_description(description)
    if not isinstance(completed, Unset):
        values["completed"] = _check_completed(completed)
    if not values:
        return get(session, task_id)
    return update_owned(session, Task, parse_id(task_id, "task"), values)


def toggle(session: Session, task_id: uuid.UUID | str) -> Task:
    """Flip completed in a single UPDATE (no read-modify-write race) and return the task."""
    return update_owned(
        session, Task, parse_id(task_id, "task"), {"completed": sa.not_(col(Task.completed))}
    )


def delete(session: Session, task_id: uuid.UUID | str) -> None:
    """Delete the user's task task_id, or raise NotFoundError."""
    delete_owned(session, Task, parse_id(task_id, "task"))


def count_open(session: Session) -> int:
    """How many of the user's tasks are not completed."""
    statement = (
        sa.select(sa.func.count())
        .select_from(Task)
        .where(col(Task.user_id) == current_user_id(session), col(Task.completed) == sa.false())
    )
    return session.scalars(statement).one()
