"""Throwaway Better Auth users for `todo-rls stress`, created before a run and deleted after."""

import secrets
import string
from collections.abc import Sequence

import psycopg

from todo_rls.engine import database_url

ALPHANUMERIC = string.ascii_letters + string.digits


def _new_user_id() -> str:
    """An id shaped like Better Auth's: 32 alphanumeric characters."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(32))


def _admin_conninfo(admin_url: str) -> str:
    return database_url(admin_url).set(drivername="postgresql").render_as_string(False)


def create_stress_users(admin_url: str, count: int) -> list[str]:
    """Insert count throwaway users into Better Auth's "user" table; returns their ids."""
    ids = [_new_user_id() for _ in range(count)]
    with psycopg.connect(_admin_conninfo(admin_url)) as conn:
        conn.cursor().executemany(
            'insert into public."user" (id, name, email, "emailVerified") '
            "values (%s, %s, %s, true)",
            [(i, f"todo-rls stress {i[:6]}", f"{i}@stress.todo-rls.invalid") for i in ids],
        )
    return ids


def delete_stress_users(admin_url: str, ids: Sequence[str]) -> None:
    """Delete the users again; their tasks go with them (on delete cascade)."""
    with psycopg.connect(_admin_conninfo(admin_url)) as conn:
        conn.execute('delete from public."user" where id = any(%s)', (list(ids),))
