"""SQLModel tables mirroring the migrated schema (the migrations, not these classes, create it)."""

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Better Auth owns "user"; it is declared here only so foreign keys resolve.
# migrations/env.py excludes it from autogenerate, and nothing here creates it.
user_table = Table("user", metadata, Column("id", Text, primary_key=True))


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic autogenerate filter: Better Auth's "user" table is not ours to compare."""
    return not (type_ == "table" and name == "user")


MESSAGE_ROLES = ("user", "assistant", "system", "tool")
TITLE_MAX_LENGTH = 200


class OwnedModel(SQLModel, registry=registry(metadata=metadata)):
    """Base of tables whose rows belong to one Better Auth user."""


def _uuid_pk() -> Any:
    return Field(
        default=None,
        primary_key=True,
        sa_column_kwargs={"server_default": text("gen_random_uuid()")},
    )


def _timestamp() -> Any:
    return Field(
        default=None,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": text("now()"), "nullable": False},
    )


def _owner() -> Any:
    return Field(primary_key=True, foreign_key="user.id", ondelete="CASCADE", sa_type=Text)


def _owner_first_key() -> PrimaryKeyConstraint:
    """(user_id, id): Citus needs the distribution column in the key, and user_id leads like
    in every other index of the owned tables (revision f442b80e6153)."""
    return PrimaryKeyConstraint("user_id", "id")


class Task(OwnedModel, table=True):
    __tablename__: ClassVar[str] = "task"
    __table_args__ = (
        _owner_first_key(),
        CheckConstraint("char_length(title) between 1 and 200", name="title_length"),
        CheckConstraint("title ~ '\\S'", name="title_not_blank"),
        Index(None, "user_id", "completed", "created_at", "id"),
        Index(None, "user_id", "created_at", "id"),
    )
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    id: uuid.UUID | None = _uuid_pk()
    user_id: str = _owner()
    title: str = Field(sa_type=Text)
    description: str | None = Field(default=None, sa_type=Text)
    completed: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()


class Conversation(OwnedModel, table=True):
    __tablename__: ClassVar[str] = "conversation"
    __table_args__ = (
        # Also the target of message's composite foreign key.
        _owner_first_key(),
        CheckConstraint(
            "title is null or (char_length(title) between 1 and 200 and title ~ '\\S')",
            name="title_valid",
        ),
        Index(None, "user_id", "updated_at", "id"),
    )
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    id: uuid.UUID | None = _uuid_pk()
    user_id: str = _owner()
    title: str | None = Field(default=None, sa_type=Text)
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()


class Message(OwnedModel, table=True):
    __tablename__: ClassVar[str] = "message"
    __table_args__ = (
        _owner_first_key(),
        # Composite: a message can only point into a conversation of its own user.
        ForeignKeyConstraint(
            ["conversation_id", "user_id"],
            ["conversation.id", "conversation.user_id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("role in ('user', 'assistant', 'system', 'tool')", name="role_known"),
        Index(None, "user_id", "conversation_id", "created_at", "id"),
    )
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    id: uuid.UUID | None = _uuid_pk()
    # Owned through the composite key above, which also ties it to "user".
    user_id: str = Field(primary_key=True, sa_type=Text)
    conversation_id: uuid.UUID
    role: str = Field(sa_type=Text)
    content: str = Field(sa_type=Text)
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()


THEMES = ("system", "light", "dark")
# A language with an optional region (en, fil, en-US, pt-BR); the CHECK uses the same pattern.
LANGUAGE_TAG_PATTERN = "^[a-z]{2,3}(-[A-Z]{2})?$"


class UserPreference(OwnedModel, table=True):
    """One row per user: the primary key is the owner's id (todo_rls.preferences reads it)."""

    __tablename__: ClassVar[str] = "user_preference"
    __table_args__ = (
        CheckConstraint("theme in ('system', 'light', 'dark')", name="theme_known"),
        CheckConstraint("language ~ '^[a-z]{2,3}(-[A-Z]{2})?$'", name="language_tag"),
    )
    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    user_id: str = Field(primary_key=True, foreign_key="user.id", ondelete="CASCADE", sa_type=Text)
    theme: str = Field(
        default="system", sa_type=Text, sa_column_kwargs={"server_default": text("'system'")}
    )
    language: str = Field(
        default="en", sa_type=Text, sa_column_kwargs={"server_default": text("'en'")}
    )
    notify_email: bool = Field(default=True, sa_column_kwargs={"server_default": text("true")})
    notify_push: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()


AUDIT_ACTIONS = ("insert", "update", "delete")
AUDITED_TABLES = ("task", "conversation", "message")


class AuditEvent(OwnedModel, table=True):
    """One insert, update or delete on task, conversation or message: who (the owner), what,
    which row, when; no content. Written by a trigger; the app role may read and add, never
    change or remove (ADR 0009)."""

    __tablename__: ClassVar[str] = "audit_event"
    __table_args__ = (
        CheckConstraint("action in ('insert', 'update', 'delete')", name="action_known"),
        CheckConstraint(
            "table_name in ('task', 'conversation', 'message')", name="table_name_known"
        ),
        Index(None, "user_id", "occurred_at", "id"),
    )

    # user_id first in the key: distributable by user_id, and the policies' filter is indexed.
    user_id: str = Field(primary_key=True, foreign_key="user.id", ondelete="CASCADE", sa_type=Text)
    id: uuid.UUID | None = _uuid_pk()
    # The moment of the change, not the transaction's start: events of one transaction keep
    # their order.
    occurred_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": text("clock_timestamp()"), "nullable": False},
    )
    action: str = Field(sa_type=Text)
    table_name: str = Field(sa_type=Text)
    row_id: uuid.UUID
