"""Checks on values from callers, made before anything reaches the database."""

import unicodedata
import uuid

from todo_rls.errors import InvalidInputError, InvalidUserIdError
from todo_rls.models import TITLE_MAX_LENGTH

USER_ID_MAX_LENGTH = 255


def validate_user_id(user_id: object) -> str:
    """Return user_id if it can name a user, else raise InvalidUserIdError saying why."""
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user id must be a str, not {type(user_id).__name__}")
    if not user_id.strip():
        raise InvalidUserIdError("user id is empty or blank; pass the authenticated user's id")
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise InvalidUserIdError(
            f"user id is {len(user_id)} characters; at most {USER_ID_MAX_LENGTH} are allowed"
        )
    # Category Cc: C0 (NUL, newline, ESC), DEL and C1 (such as NEL, a line break to some logs).
    if any(unicodedata.category(char) == "Cc" for char in user_id):
        raise InvalidUserIdError("user id contains a control character (such as NUL)")
    # Checked here, not when the first transaction quotes it: by then a connection is taken.
    if not _is_utf8(user_id):
        raise InvalidUserIdError("user id contains a lone surrogate, not valid Unicode")
    return user_id


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_id(value: object, what: str) -> uuid.UUID:
    """value as a UUID (a UUID or its text form), else InvalidInputError naming what."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidInputError(f"{what} id must be a UUID, not {value!r:.80}")


def check_text(value: object, what: str) -> str:
    """value if it is a str PostgreSQL can store, else InvalidInputError naming what."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(f"{what} contains a NUL character, which text cannot store")
    if not _is_utf8(value):
        raise InvalidInputError(f"{what} contains a lone surrogate, not valid Unicode")
    return value


def check_title(value: object, what: str = "title") -> str:
    """value if it is 1 to TITLE_MAX_LENGTH characters and not blank (the schema's CHECKs)."""
    title = check_text(value, what)
    if not 1 <= len(title) <= TITLE_MAX_LENGTH:
        raise InvalidInputError(
            f"{what} must be 1 to {TITLE_MAX_LENGTH} characters long, not {len(title)}"
        )
    # str.isspace() counts more characters as blank than the CHECK's regex \S does, so
    # every title the database would refuse is refused here first.
    if title.isspace():
        raise InvalidInputError(f"{what} must contain a character that is not whitespace")
    return title
