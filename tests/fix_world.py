"""A small world of users and rows for the schema tests, and app-role connections acting in it.

alice and bob each own one row in every owned table; carol owns nothing. Every user is new, so
the world can be built in the shared test database. The isolation matrix itself is the
plugin's (todo_rls.testing.find_leaks); this is only the arrangement the other tests read.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from fix_db import APP_LOGIN, create_user, scope_to

Connect = Callable[..., psycopg.Connection[Any]]
TABLES = ("task", "conversation", "message")  # keyed by a random id
# Every owned table; user_preference is keyed by its owner's id (one row per user).
OWNED_TABLES = (*TABLES, "user_preference")
KEYS = {"user_preference": "user_id"}


def key_of(table: str) -> str:
    """The column that identifies a row of table."""
    return KEYS.get(table, "id")


@dataclass(frozen=True)
class World:
    """alice and bob, each owning one task, one conversation with a message, and preferences;
    carol, who owns nothing."""

    alice: str
    bob: str
    carol: str
    rows: dict[str, dict[str, str]]  # table -> owner's user id -> row key (see key_of)

    def user_id(self, actor: str) -> str | None:
        """The app.user_id an actor's transaction carries (None: never set)."""
        actors = {"alice": self.alice, "bob": self.bob, "carol": self.carol, "other": self.bob}
        return (actors | {"empty": ""}).get(actor)


def build_world(admin: psycopg.Connection[Any]) -> World:
    """Arrange the rows as the superuser (fresh users: the database may be shared); no
    assertion runs as it."""
    alice, bob, carol = create_user(admin), create_user(admin), create_user(admin)
    rows: dict[str, dict[str, str]] = {table: {} for table in OWNED_TABLES}
    for user in (alice, bob):
        rows["task"][user] = _insert_id(admin, "task", {"user_id": user, "title": "own task"})
        conversation = _insert_id(admin, "conversation", {"user_id": user, "title": "own chat"})
        rows["conversation"][user] = conversation
        rows["message"][user] = _insert_id(
            admin,
            "message",
            {"user_id": user, "conversation_id": conversation, "role": "user", "content": "hi"},
        )
        admin.execute("insert into user_preference (user_id) values (%s)", (user,))
        rows["user_preference"][user] = user
    return World(alice=alice, bob=bob, carol=carol, rows=rows)


def insert_statement(
    table: str, values: dict[str, Any], *, upsert: bool = False, returning: str | None = None
) -> sql.Composed:
    """INSERT of values (as bind parameters) into table; upsert touches the row on conflict
    with the row of the same key."""
    query = sql.SQL("insert into {} ({}) values ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(map(sql.Placeholder, values)),
    )
    if upsert:
        # The primary key: (user_id, id), or user_preference's (user_id).
        target = ("user_id",) if table in KEYS else ("user_id", "id")
        query += sql.SQL(" on conflict ({}) do update set updated_at = excluded.updated_at").format(
            sql.SQL(", ").join(map(sql.Identifier, target))
        )
    if returning:
        query += sql.SQL(" returning ") + sql.SQL(returning)
    return query


def _insert_id(conn: psycopg.Connection[Any], table: str, values: dict[str, Any]) -> str:
    row = conn.execute(insert_statement(table, values, returning="id::text"), values).fetchone()
    assert row is not None
    return str(row[0])


@contextmanager
def acting(connect: Connect, world: World, actor: str) -> Iterator[psycopg.Connection[Any]]:
    """A fresh app-role connection in a rolled-back transaction, scoped as actor is."""
    with connect() as conn:
        if actor == "reset":
            with conn.transaction():
                scope_to(conn, world.bob)
        with conn.transaction(force_rollback=True):
            row = conn.execute("select current_user, row_security_active('task')").fetchone()
            assert row == (APP_LOGIN, True), f"probes must run as {APP_LOGIN} under RLS, not {row}"
            user_id = world.user_id(actor)
            if user_id is not None:
                scope_to(conn, user_id)
            yield conn
