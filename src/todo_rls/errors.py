"""Errors a caller can act on; each message names the fix."""


class TodoRlsError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidUserIdError(TodoRlsError, ValueError):
    """The user id given to a scoped session cannot identify a user."""


class UnsafeRoleError(TodoRlsError):
    """The database role would not be subject to row-level security."""


class DatabaseUrlError(TodoRlsError, ValueError):
    """DATABASE_URL is missing or is not a PostgreSQL URL."""


class DatabaseUnavailableError(TodoRlsError):
    """The server did not accept a connection, even after retries."""


class MigrationPreconditionError(TodoRlsError):
    """The database is not in a state the migrations can start from."""


class InvalidInputError(TodoRlsError, ValueError):
    """A value given to the data-access layer breaks a rule of the schema."""


class NotFoundError(TodoRlsError, LookupError):
    """No row with that id is visible to the current user (absent or someone else's)."""


class UnknownUserError(TodoRlsError, LookupError):
    """The session's user id is not in Better Auth's "user" table (deleted, or never a user)."""


class SigningKeyError(TodoRlsError, ValueError):
    """The signing key ($TODO_RLS_SIGNING_KEY, or one passed in) is missing or malformed."""


class ContextRejectedError(TodoRlsError):
    """The database refused the transaction's signed user context.

    Forged, expired, signed with a retired or unknown key, or no key installed at all; the
    message carries the database's reason and the fix.
    """


class TamperedConnectionError(TodoRlsError):
    """A pooled connection held state only SQL run by an attacker leaves; it was discarded."""


class SchemaNotMigratedError(TodoRlsError):
    """The database lacks objects the library needs: apply the migrations."""
