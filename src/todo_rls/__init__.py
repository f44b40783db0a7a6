"""Row-level-security-first PostgreSQL for a multi-user Todo + AI chat backend."""

from todo_rls.engine import EngineSettings, create_async_engine, create_engine, database_url
from todo_rls.errors import (
    ContextRejectedError,
    DatabaseUnavailableError,
    DatabaseUrlError,
    InvalidInputError,
    InvalidUserIdError,
    MigrationPreconditionError,
    NotFoundError,
    SchemaNotMigratedError,
    SigningKeyError,
    TamperedConnectionError,
    TodoRlsError,
    UnknownUserError,
    UnsafeRoleError,
)
from todo_rls.identity import SigningKey
from todo_rls.models import AuditEvent, Conversation, Message, Task, UserPreference
from todo_rls.owner_rls import OwnerRlsArgumentError, disable_owner_rls, enable_owner_rls
from todo_rls.session import (
    APP_ROLE,
    current_user_id,
    scoped_async_session,
    scoped_session,
)
from todo_rls.settings import Settings, SettingsError, load_settings
from todo_rls.validation import validate_user_id

__all__ = [
    "APP_ROLE",
    "AuditEvent",
    "ContextRejectedError",
    "Conversation",
    "DatabaseUnavailableError",
    "DatabaseUrlError",
    "EngineSettings",
    "InvalidInputError",
    "InvalidUserIdError",
    "Message",
    "MigrationPreconditionError",
    "NotFoundError",
    "OwnerRlsArgumentError",
    "SchemaNotMigratedError",
    "Settings",
    "SettingsError",
    "SigningKey",
    "SigningKeyError",
    "TamperedConnectionError",
    "Task",
    "TodoRlsError",
    "UnknownUserError",
    "UnsafeRoleError",
    "UserPreference",
    "create_async_engine",
    "create_engine",
    "current_user_id",
    "database_url",
    "disable_owner_rls",
    "enable_owner_rls",
    "load_settings",
    "scoped_async_session",
    "scoped_session",
    "validate_user_id",
]
