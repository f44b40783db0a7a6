"""The session user's audit trail: what was done to which of their rows, and when (ADR 0009).

Read-only: the trail is written by a trigger on task, conversation and message, and the app
role may not change or remove it. Like the other data-access modules, the query filters by
user_id as well as relying on row-level security.
"""

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from todo_rls.models import AuditEvent
from todo_rls.pagination import Page, fetch_page
from todo_rls.session import current_user_id


def list_page(session: Session, *, after: str | None = None, limit: int = 20) -> Page[AuditEvent]:
    """A page of the user's audit events, newest first; limit outside 1..100 raises
    InvalidInputError."""
    statement = sa.select(AuditEvent).where(col(AuditEvent.user_id) == current_user_id(session))
    return fetch_page(
        session,
        statement,
        AuditEvent,
        order_by="occurred_at",
        descending=True,
        after=after,
        limit=limit,
    )
