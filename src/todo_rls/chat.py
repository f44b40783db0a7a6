"""The session user's AI chat: conversations and their messages.

Same contract as todo_rls.tasks: a scoped session first, flush and never commit, an explicit
user_id filter on top of row-level security, and another user's row reported as missing.
"""

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from todo_rls.errors import InvalidInputError
from todo_rls.models import MESSAGE_ROLES, Conversation, Message
from todo_rls.owned_rows import delete_owned, get_owned, update_owned, user_must_exist
from todo_rls.pagination import Page, fetch_page
from todo_rls.session import current_user_id
from todo_rls.validation import check_text, check_title, parse_id


def _check_conversation_title(value: object) -> str | None:
    return None if value is None else check_title(value, "conversation title")


def create_conversation(session: Session, title: str | None = None) -> Conversation:
    """Start a conversation for the session's user; the title is optional."""
    conversation = Conversation(
        user_id=current_user_id(session), title=_check_conversation_title(title)
    )
    session.add(conversation)
    with user_must_exist(session):
        session.flush()
    return conversation


def get_conversation(session: Session, conversation_id: uuid.UUID | str) -> Conversation:
    """The session user's conversation conversation_id, or NotFoundError."""
    return get_owned(session, Conversation, parse_id(conversation_id, "conversation"))


def list_conversations(
    session: Session, *, after: str | None = None, limit: int = 20
) -> Page[Conversation]:
    """A page of the user's conversations, most recently active (updated_at) first."""
    statement = sa.select(Conversation).where(col(Conversation.user_id) == current_user_id(session))
    return fetch_page(
        session,
        statement,
        Conversation,
        order_by="updated_at",
        descending=True,
        after=after,
        limit=limit,
    )


def rename_conversation(
    session: Session, conversation_id: uuid.UUID | str, title: str | None
) -> Conversation:
    """Set (or with None, clear) a conversation's title."""
    values = {"title": _check_conversation_title(title)}
    return update_owned(session, Conversation, parse_id(conversation_id, "conversation"), values)


def delete_conversation(session: Session, conversation_id: uuid.UUID | str) -> None:
    """Delete a conversation; the database cascades the delete to its messages."""
    delete_owned(session, Conversation, parse_id(conversation_id, "conversation"))


def add_message(
    session: Session, conversation_id: uuid.UUID | str, role: str, content: str
) -> Message:
    """Append a message and mark the conversation active, in the caller's transaction."""
    if role not in MESSAGE_ROLES:
        raise InvalidInputError(f"message role must be one of {MESSAGE_ROLES}, not {role!r:.80}")
    content = check_text(content, "message content")
    conversation_id = parse_id(conversation_id, "conversation")
    # Bumping first proves the conversation is the caller's before anything is inserted.
    update_owned(session, Conversation, conversation_id, {"updated_at": sa.func.now()})
    statement = (
        sa.insert(Message)
        .values(
            user_id=current_user_id(session),
            conversation_id=conversation_id,
            role=role,
            content=content,
            # now() is the transaction's start, shared by every message the transaction
            # adds; the clock keeps a prompt and its reply, saved together, in order.
            created_at=sa.func.clock_timestamp(),
        )
        .returning(Message)
    )
    return session.scalars(statement).one()


def list_messages(
    session: Session,
    conversation_id: uuid.UUID | str,
    *,
    after: str | None = None,
    limit: int = 50,
) -> Page[Message]:
    """A page of a conversation's messages, oldest first; NotFoundError if it is not the user's."""
    conversation_id = parse_id(conversation_id, "conversation")
    statement = sa.select(Message).where(
        col(Message.user_id) == current_user_id(session),
        col(Message.conversation_id) == conversation_id,
    )
    page = fetch_page(
        session,
        statement,
        Message,
        order_by="created_at",
        descending=False,
        after=after,
        limit=limit,
    )
    if not page.items:  # an empty page: is the conversation missing, or just empty?
        get_conversation(session, conversation_id)
    return page
