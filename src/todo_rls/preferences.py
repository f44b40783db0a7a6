"""The session user's preferences: one row per user, read with defaults, changed by upsert.

Same contract as todo_rls.tasks: a scoped session first, flush and never commit. The row's key is
the user's own id, so there is no id to pass and no other user's row to name.
"""

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlmodel import col

from todo_rls.errors import InvalidInputError
from todo_rls.models import LANGUAGE_TAG_PATTERN, THEMES, UserPreference
from todo_rls.owned_rows import user_must_exist
from todo_rls.session import current_user_id
from todo_rls.tasks import Unset
from todo_rls.validation import check_text

UNSET = Unset.UNSET
_LANGUAGE_TAG = re.compile(LANGUAGE_TAG_PATTERN)


def check_theme(value: object) -> str:
    """value if it is one of THEMES (the schema's CHECK), else InvalidInputError."""
    if value not in THEMES:
        raise InvalidInputError(f"theme must be one of {', '.join(THEMES)}; not {value!r:.80}")
    return str(value)


def check_language(value: object) -> str:
    """value if it is a tag like en or pt-BR (the schema's CHECK), else InvalidInputError."""
    # fullmatch: unlike PostgreSQL's, Python's $ also matches before a final newline.
    if not _LANGUAGE_TAG.fullmatch(check_text(value, "language")):
        raise InvalidInputError(
            "language must be 2 or 3 lower-case letters, optionally followed by '-' and a"
            f" 2-letter upper-case region (en, fil, pt-BR); not {value!r:.80}"
        )
    return str(value)


def _check_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be True or False, not {value!r:.80}")
    return value


def get(session: Session) -> UserPreference:
    """The user's preferences; if they never saved any, the defaults (created_at is None)."""
    user_id = current_user_id(session)
    statement = sa.select(UserPreference).where(col(UserPreference.user_id) == user_id)
    row = session.scalars(statement).one_or_none()
    # Not added to the session: reading the defaults writes nothing.
    return row if row is not None else UserPreference(user_id=user_id)


def update(
    session: Session,
    *,
    theme: str | Unset = UNSET,
    language: str | Unset = UNSET,
    notify_email: bool | Unset = UNSET,
    notify_push: bool | Unset = UNSET,
) -> UserPreference:
    """Save the given fields in one INSERT ... ON CONFLICT DO UPDATE; others keep their value."""
    values: dict[str, Any] = {}
    if not isinstance(theme, Unset):
        values["theme"] = check_theme(theme)
    if not isinstance(language, Unset):
        values["language"] = check_language(language)
    if not isinstance(notify_email, Unset):
        values["notify_email"] = _check_flag(notify_email, "notify_email")
    if not isinstance(notify_push, Unset):
        values["notify_push"] = _check_flag(notify_push, "notify_push")
    if not values:
        return get(session)
    user_id = current_user_id(session)
    # One statement, no read-modify-write race: a first save inserts the defaults plus values,
    # a later one changes only values. Both sides are bound by the policies (insert's WITH CHECK,
    # update's USING and WITH CHECK), and the explicit filter repeats the owner rule.
    statement = (
        insert(UserPreference)
        .values(user_id=user_id, **values)
        .on_conflict_do_update(
            index_elements=[col(UserPreference.user_id)],
            set_=values,
            where=col(UserPreference.user_id) == user_id,
        )
        .returning(UserPreference)
    )
    with user_must_exist(session):
        result = session.scalars(statement, execution_options={"populate_existing": True})
    return result.one()


def reset(session: Session) -> None:
    """Forget the user's saved preferences, so get() returns the defaults again."""
    statement = sa.delete(UserPreference).where(
        col(UserPreference.user_id) == current_user_id(session)
    )
    session.execute(statement)
