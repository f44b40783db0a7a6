"""ADR 0009: deletes are real, and an append-only audit trail records who did what to which row
of task, conversation and message, and when, without content. Every test acts as the app's login
role through the wrapper and starts with a positive control."""

import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from todo_rls import audit, chat, scoped_session, tasks
from todo_rls.models import AuditEvent

from fix_db import APP_LOGIN, create_user

Event = tuple[str, str, Any]  # (action, table, row id)


def id_of(row: Any) -> uuid.UUID:
    """The server-made id of a row just flushed."""
    assert isinstance(row.id, uuid.UUID)
    return row.id


def trail(session: Session) -> list[Event]:
    """The session user's audit events, oldest first, as (action, table, row id)."""
    page = audit.list_page(session, limit=100)
    assert page.next_cursor is None
    return [(e.action, e.table_name, e.row_id) for e in reversed(page.items)]


def as_app_role(session: Session) -> None:
    """Positive control of the actor: the app's login role, bound by RLS on audit_event."""
    facts = session.execute(
        text("select current_user::text, pg_catalog.row_security_active('public.audit_event')")
    ).one()
    assert tuple(facts) == (APP_LOGIN, True)


def test_a_users_writes_are_recorded_without_their_content(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        as_app_role(session)
        task_id = id_of(tasks.create(session, "buy milk", "two litres"))
        tasks.toggle(session, task_id)
        tasks.delete(session, task_id)
        session.commit()
    with scoped_session(app_engine, alice) as session:
        assert trail(session) == [
            ("insert", "task", task_id),
            ("update", "task", task_id),
            ("delete", "task", task_id),
        ]
        assert all(e.user_id == alice for e in audit.list_page(session).items)
    # The delete is real: the task is gone even for the superuser, and so is its text.
    assert admin.execute("select count(*) from task where id = %s", (task_id,)).fetchone() == (0,)
    columns = {column.name for column in AuditEvent.__table__.columns}  # type: ignore[attr-defined]
    assert columns == {"user_id", "id", "occurred_at", "action", "table_name", "row_id"}
    stored = admin.execute("select audit_event::text from audit_event where user_id = %s", (alice,))
    assert not [row for (row,) in stored if "milk" in row or "litres" in row]


def test_another_user_and_an_unscoped_session_see_none_of_a_users_trail(
    app_engine: Engine, alice: str, bob: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        tasks.create(session, "hers")
        session.commit()
    with scoped_session(app_engine, alice) as session:
        assert len(trail(session)) == 1  # positive control: the owner sees her event
    with scoped_session(app_engine, bob) as session:
        as_app_role(session)
        assert trail(session) == []
        raw = session.execute(text("select count(*) from audit_event")).scalar_one()
        assert raw == 0  # not the data-access filter: the policy
    with Session(app_engine) as session:
        assert session.execute(text("select count(*) from audit_event")).scalar_one() == 0


@pytest.mark.parametrize(
    "statement",
    ["update audit_event set action = 'insert'", "delete from audit_event"],
    ids=["update", "delete"],
)
def test_the_app_role_cannot_change_or_remove_its_own_trail(
    app_engine: Engine, alice: str, statement: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        tasks.create(session, "hers")
        session.commit()
    with scoped_session(app_engine, alice) as session:
        as_app_role(session)
        assert len(trail(session)) == 1  # positive control: her own event, readable
        with pytest.raises(DBAPIError) as refused:
            session.execute(text(statement))
        assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)


def test_a_user_cannot_write_an_event_into_another_users_trail(
    app_engine: Engine, alice: str, bob: str
) -> None:
    insert = text(
        "insert into audit_event (user_id, action, table_name, row_id)"
        " values (:user, 'delete', 'task', gen_random_uuid())"
    )
    with scoped_session(app_engine, alice) as session:
        as_app_role(session)
        session.execute(insert, {"user": alice})  # positive control: her own trail takes it
        session.rollback()
    with scoped_session(app_engine, alice) as session, pytest.raises(DBAPIError) as refused:
        session.execute(insert, {"user": bob})
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)
    assert "row-level security" in str(refused.value.orig)
    with scoped_session(app_engine, bob) as session:
        assert trail(session) == []


def test_a_conversations_delete_records_it_and_each_message_it_took(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        conversation = id_of(chat.create_conversation(session, "a chat"))
        first = id_of(chat.add_message(session, conversation, "user", "hello"))
        second = id_of(chat.add_message(session, conversation, "assistant", "hi there"))
        session.commit()
    with scoped_session(app_engine, alice) as session:
        chat.delete_conversation(session, conversation)
        session.commit()
    with scoped_session(app_engine, alice) as session:
        events = trail(session)
    # Each message added bumps its conversation; the delete cascades to the messages.
    assert events[:5] == [
        ("insert", "conversation", conversation),
        ("update", "conversation", conversation),
        ("insert", "message", first),
        ("update", "conversation", conversation),
        ("insert", "message", second),
    ]
    assert sorted(events[5:], key=str) == sorted(
        [
            ("delete", "conversation", conversation),
            ("delete", "message", first),
            ("delete", "message", second),
        ],
        key=str,
    )
    left = admin.execute("select count(*) from message where conversation_id = %s", (conversation,))
    assert left.fetchone() == (0,)


def test_deleting_the_account_deletes_its_trail_and_records_nothing_new(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str, bob: str
) -> None:
    for user in (alice, bob):
        with scoped_session(app_engine, user) as session:
            tasks.create(session, "mine")
            session.commit()
    count = "select count(*) from audit_event where user_id = %s"
    assert admin.execute(count, (alice,)).fetchone() == (1,)  # positive control
    # As Better Auth does when a user deletes their account: the cascade is no action of hers.
    admin.execute('delete from "user" where id = %s', (alice,))
    assert admin.execute(count, (alice,)).fetchone() == (0,)
    assert admin.execute("select count(*) from task where user_id = %s", (alice,)).fetchone() == (
        0,
    )
    with scoped_session(app_engine, bob) as session:
        assert len(trail(session)) == 1


def test_an_audit_event_for_an_unknown_user_never_hides_the_unknown_user_error(
    app_engine: Engine, admin: psycopg.Connection[Any]
) -> None:
    # The task's own foreign key to "user" fails first, as UnknownUserError, whatever the
    # trigger would add: the audit trail changes no error a caller sees.
    from todo_rls import UnknownUserError

    user = create_user(admin)
    admin.execute('delete from "user" where id = %s', (user,))
    with pytest.raises(UnknownUserError), scoped_session(app_engine, user) as session:
        tasks.create(session, "anything")
    assert admin.execute(
        "select count(*) from audit_event where user_id = %s", (user,)
    ).fetchone() == (0,)
