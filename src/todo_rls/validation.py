"""Checks on values from callers, made before anything reaches the database."""

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
    if any(ord(char) < 32 or ord(char) == 127 for char in user_id):
        raise InvalidUserIdError("user id contains a control character (such as NUL)")
    return user_id


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
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} contains a lone surrogate, not valid Unicode") from None
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
