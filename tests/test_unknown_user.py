"""A session user that is not in Better Auth's "user" table: its writes raise UnknownUserError.

Better Auth can delete a user whose token is still valid. The foreign key to "user" refuses the
write (the app role cannot read "user", so the server's error shows no key); the data-access
layer turns it into an error the API can answer as "signed out", and nothing is written.
"""

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from todo_rls import UnknownUserError, chat, preferences, scoped_session, tasks

from fix_db import create_user

WRITES: dict[str, Callable[[Session], Any]] = {
    "create a task": lambda session: tasks.create(session, "a task"),
    "create a conversation": lambda session: chat.create_conversation(session, "a chat"),
    "save preferences": lambda session: preferences.update(session, theme="dark"),
}


def rows_of(admin: psycopg.Connection[Any], user_id: str) -> tuple[int, ...]:
    counted = admin.execute(
        "select (select count(*) from task where user_id = %(u)s),"
        " (select count(*) from conversation where user_id = %(u)s),"
        " (select count(*) from user_preference where user_id = %(u)s)",
        {"u": user_id},
    ).fetchone()
    assert counted is not None
    return tuple(counted)


@pytest.mark.parametrize("write", WRITES)
def test_a_write_for_a_deleted_user_raises_unknown_user_and_writes_nothing(
    write: str, app_engine: Engine, admin: psycopg.Connection[Any]
) -> None:
    user_id = create_user(admin)
    # Positive control: the same write succeeds while the user exists.
    with scoped_session(app_engine, user_id) as session:
        WRITES[write](session)
        session.commit()
    assert sum(rows_of(admin, user_id)) == 1
    admin.execute('delete from "user" where id = %s', (user_id,))  # cascades to their rows

    with pytest.raises(UnknownUserError) as refused, scoped_session(app_engine, user_id) as session:
        WRITES[write](session)
        session.commit()
    assert str(refused.value) == (
        f'no user {user_id!r} in the "user" table: the account was deleted or the id is not'
        " a Better Auth user id; treat the caller as signed out"
    )
    assert isinstance(refused.value.__cause__.orig, psycopg.errors.ForeignKeyViolation)  # type: ignore[union-attr]
    assert rows_of(admin, user_id) == (0, 0, 0)


@pytest.mark.own_database
def test_other_integrity_errors_are_not_reported_as_an_unknown_user(
    app_engine: Engine, admin: psycopg.Connection[Any]
) -> None:
    # Only the foreign key to "user" means the account is gone; a check the schema adds
    # later stays the IntegrityError it is.
    user_id = create_user(admin)
    admin.execute("alter table task add constraint ck_task_title_not_taboo check (title <> 'x')")
    with pytest.raises(IntegrityError) as refused, scoped_session(app_engine, user_id) as session:
        tasks.create(session, "x")
    assert isinstance(refused.value.orig, psycopg.errors.CheckViolation)
    assert rows_of(admin, user_id) == (0, 0, 0)
