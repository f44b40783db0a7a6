"""One row of the session user's, by id: read, update or delete it, else NotFoundError.

Every statement filters by id and by the session's user_id (defence in depth on top of RLS),
and a row that is missing reads exactly like a row of another user. Inserts of a new row for
the session's user go through user_must_exist, for a user id Better Auth no longer has.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from todo_rls.errors import NotFoundError, UnknownUserError
from todo_rls.models import OwnedModel
from todo_rls.session import current_user_id

M = TypeVar("M", bound=OwnedModel)


def _owned(session: Session, model: type[M], row_id: uuid.UUID) -> sa.ColumnElement[bool]:
    columns = inspect(model).columns
    return sa.and_(columns["id"] == row_id, columns["user_id"] == current_user_id(session))


def not_found(model: type[M], row_id: uuid.UUID) -> NotFoundError:
    """The same words for a missing row and another user's: the caller cannot tell them apart."""
    return NotFoundError(f"{model.__tablename__} {row_id} not found")


@contextmanager
def user_must_exist(session: Session) -> Iterator[None]:
    """Around a write whose only foreign key is user_id -> "user": its 23503 becomes
    UnknownUserError, so a caller whose account is gone gets an error it can act on."""
    try:
        yield
    except sa.exc.IntegrityError as error:
        if not isinstance(error.orig, psycopg.errors.ForeignKeyViolation):
            raise
        raise UnknownUserError(
            f'no user {current_user_id(session)!r:.80} in the "user" table: the account was'
            " deleted or the id is not a Better Auth user id; treat the caller as signed out"
        ) from error


def get_owned(session: Session, model: type[M], row_id: uuid.UUID) -> M:
    """The session user's row row_id of model."""
    row = session.scalars(sa.select(model).where(_owned(session, model, row_id))).one_or_none()
    if row is None:
        raise not_found(model, row_id)
    return row


def update_owned(session: Session, model: type[M], row_id: uuid.UUID, values: dict[str, Any]) -> M:
    """Apply values to the user's row in one UPDATE ... RETURNING and return the row as it is."""
    statement = sa.update(model).where(_owned(session, model, row_id)).values(values)
    # populate_existing: a row already in the session gets the row as it now is.
    result = session.scalars(
        statement.returning(model), execution_options={"populate_existing": True}
    )
    row: M | None = result.one_or_none()
    if row is None:
        raise not_found(model, row_id)
    return row


def delete_owned(session: Session, model: type[M], row_id: uuid.UUID) -> None:
    """Delete the user's row row_id of model."""
    statement = sa.delete(model).where(_owned(session, model, row_id))
    if session.scalars(statement.returning(inspect(model).columns["id"])).one_or_none() is None:
        raise not_found(model, row_id)
