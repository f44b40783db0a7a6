"""Keyset pagination shared by the data-access modules: opaque cursors, page size, page query."""

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import DateTime, Select, Uuid, inspect, tuple_
from sqlalchemy.orm import Session

from todo_rls.errors import InvalidInputError

MAX_PAGE_SIZE = 100
# A real cursor is about 120 characters; refuse big inputs before decoding them.
_MAX_CURSOR_LENGTH = 256

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next page (None on the last page)."""

    items: list[T]
    next_cursor: str | None


def check_limit(limit: object) -> int:
    """Return limit if it is a page size from 1 to MAX_PAGE_SIZE, else raise InvalidInputError."""
    # Refused rather than clamped: a caller asking for 1000 rows should learn it gets 100.
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(
            f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, not {limit!r:.80}; "
            "fetch more rows by following next_cursor"
        )
    return limit


def encode_cursor(kind: str, at: datetime, row_id: uuid.UUID) -> str:
    """An opaque urlsafe cursor naming the last row (at, row_id) of a page of kind."""
    payload = json.dumps([kind, at.isoformat(), str(row_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode("ascii").rstrip("=")


def decode_cursor(kind: str, cursor: object) -> tuple[datetime, uuid.UUID]:
    """The keyset values in a cursor of kind; anything else raises InvalidInputError."""
    error = InvalidInputError(
        f"cursor is not a {kind} cursor; pass the next_cursor of the previous {kind} page"
    )
    if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR_LENGTH:
        raise error
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        payload = json.loads(raw)  # base64, UTF-8 and JSON errors are all ValueErrors
    except ValueError:
        raise error from None
    if not (
        isinstance(payload, list)
        and len(payload) == 3
        and payload[0] == kind
        and all(isinstance(part, str) for part in payload[1:])
    ):
        raise error
    try:
        at, row_id = datetime.fromisoformat(payload[1]), uuid.UUID(payload[2])
    except ValueError:
        raise error from None
    if at.tzinfo is None:  # the keys are timestamptz; a naive time would be read as UTC
        raise error
    return at, row_id


def fetch_page(
    session: Session,
    statement: Select[T],
    model: type[T],
    *,
    order_by: str,
    descending: bool,
    after: str | None,
    limit: int,
) -> Page[T]:
    """Run statement (already filtered to the user) as one keyset page after cursor `after`.

    Rows come ordered by (model.<order_by>, model.id), both descending or both ascending; the
    row-value comparison `(time, id) < (:at, :id)` lets a (user_id, ..., time, id) index serve
    the page. The cursor names the model, so cursors cannot cross lists.
    """
    check_limit(limit)
    kind, columns = model.__name__.lower(), inspect(model).columns
    at_column, id_column = columns[order_by], columns["id"]
    if after is not None:
        at, row_id = decode_cursor(kind, after)
        bound = tuple_(at, row_id, types=[DateTime(timezone=True), Uuid()])
        key = tuple_(at_column, id_column)
        statement = statement.where(key < bound if descending else key > bound)
    order = (at_column.desc(), id_column.desc()) if descending else (at_column, id_column)
    rows = list(session.scalars(statement.order_by(*order).limit(limit + 1)))
    if len(rows) <= limit:  # the extra row was not there: this is the last page
        return Page(rows, None)
    last: Any = rows[limit - 1]
    return Page(rows[:limit], encode_cursor(kind, getattr(last, order_by), last.id))
