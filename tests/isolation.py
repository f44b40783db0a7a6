"""Isolation probes: each tries one way to reach alice's rows as someone who is not alice.

A read probe collects the owners of the rows it got back. A write probe runs without
RETURNING (which would add the SELECT policy and hide a broken write policy) and collects the
owners of every row it inserted, changed or deleted, seen through an audit function that
bypasses RLS inside the same transaction. The attack leaks when it reached a row the actor
does not own. Each probe first runs its positive control (the owner does reach their own row),
so an empty table or a never-bound user cannot make it pass. Every statement runs on a fresh
connection as the application login role, in a transaction that is rolled back.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from fix_db import APP_LOGIN, create_user

Connect = Callable[..., psycopg.Connection[Any]]
Statement = tuple[sql.Composed | sql.SQL, dict[str, Any] | None]  # params None: a COPY
TABLES = ("task", "conversation", "message")  # keyed by a random id
# Every owned table; user_preference is keyed by its owner's id (one row per user).
OWNED_TABLES = (*TABLES, "user_preference")
KEYS = {"user_preference": "user_id"}


def key_of(table: str) -> str:
    """The column that identifies a row of table."""
    return KEYS.get(table, "id")


def claimed_victim(table: str) -> str:
    """Whose row an insert or re-own attack creates: alice, or (where one row per user would
    collide with hers and hide a broken policy behind 23505) carol, who owns no rows."""
    return "carol" if table in KEYS else "alice"


# Who attacks alice's rows: another user; a transaction that never set app.user_id; one that
# set it to ''; one on a connection whose earlier transaction set it (it now reads '').
ACTORS = ("other", "unset", "empty", "reset")
ACTOR_LABELS = {
    "other": "another user",
    "unset": "an unscoped transaction",
    "empty": "an empty app.user_id",
    "reset": "a reused connection",
}

# How the server refuses a statement: an RLS or privilege check (42501) or a constraint (23xxx).
# Any other error (a broken probe, a lost connection) must fail the test, not pass as "refused".
REFUSALS = (psycopg.errors.InsufficientPrivilege, psycopg.errors.IntegrityError)

# Test-only, in the probe database: the superuser's view of every row and all its owners (a
# message also belongs to its conversation's owner), visible to the probe's own transaction.
AUDIT_FUNCTION = """
create schema probe_audit;
create function probe_audit.all_rows() returns table (id text, owners text[], state text)
language sql stable security definer set search_path = '' as $$
  select t.id::text, array[t.user_id], t::text from public.task t
  union all select c.id::text, array[c.user_id], c::text from public.conversation c
  union all select m.id::text, array[m.user_id, c.user_id], m::text
    from public.message m left join public.conversation c on c.id = m.conversation_id
  union all select 'user_preference:' || p.user_id, array[p.user_id], p::text
    from public.user_preference p
$$;
grant usage on schema probe_audit to public;
"""


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
    """Arrange rows and the audit function as the superuser; no assertion runs as it."""
    admin.execute(AUDIT_FUNCTION)
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
        query += sql.SQL(" on conflict ({}) do update set updated_at = excluded.updated_at").format(
            sql.Identifier(key_of(table))
        )
    if returning:
        query += sql.SQL(" returning ") + sql.SQL(returning)
    return query


def _insert_id(conn: psycopg.Connection[Any], table: str, values: dict[str, Any]) -> str:
    row = conn.execute(insert_statement(table, values, returning="id::text"), values).fetchone()
    assert row is not None
    return str(row[0])


def _row_values(world: World, table: str, owner: str) -> dict[str, Any]:
    """Columns of a new row of table claiming owner (a message goes into owner's chat)."""
    if table == "message":
        conversation = world.rows["conversation"][owner]
        return {"user_id": owner, "conversation_id": conversation, "role": "user", "content": "x"}
    if table == "user_preference":
        return {"user_id": owner, "theme": "dark"}
    return {"user_id": owner, "title": "probe"}


@contextmanager
def acting(connect: Connect, world: World, actor: str) -> Iterator[psycopg.Connection[Any]]:
    """A fresh app-role connection in a rolled-back transaction, scoped as actor is."""
    with connect() as conn:
        if actor == "reset":
            with conn.transaction():
                conn.execute("select set_config('app.user_id', %s, true)", (world.bob,))
        with conn.transaction(force_rollback=True):
            row = conn.execute("select current_user, row_security_active('task')").fetchone()
            assert row == (APP_LOGIN, True), f"probes must run as {APP_LOGIN} under RLS, not {row}"
            user_id = world.user_id(actor)
            if user_id is not None:
                conn.execute("select set_config('app.user_id', %s, true)", (user_id,))
            yield conn


def _read_owners(conn: psycopg.Connection[Any], statement: Statement) -> set[str]:
    query, params = statement
    if params is None:
        with conn.cursor().copy(query) as copy:
            return {str(row[0]) for row in copy.rows()}
    return {str(row[0]) for row in conn.execute(query, params).fetchall()}


def _audit(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], list[str]]:
    rows = conn.execute("select id::text, state, owners from probe_audit.all_rows()").fetchall()
    return {(row[0], row[1]): list(row[2]) for row in rows}


def _written_owners(conn: psycopg.Connection[Any], statement: Statement) -> set[str]:
    before = _audit(conn)
    query, params = statement
    conn.execute(query, params)
    after = _audit(conn)
    changed = before.keys() ^ after.keys()  # inserted, deleted, or old and new state of an update
    return {owner for key in changed for owner in (before | after)[key]}


@dataclass(frozen=True)
class Probe:
    """One attack on one table, with the owner's positive control."""

    table: str
    action: str
    attack: Callable[[World, str], Statement]
    writes: bool = False
    # Who runs the control, and its statement: by default the attack itself, as alice.
    control_actor: str = "alice"
    control: Callable[[World], Statement] | None = None

    @property
    def id(self) -> str:
        return f"{self.table}-{self.action.replace(' ', '_')}"

    def reached(self, connect: Connect, world: World, actor: str, statement: Statement) -> set[str]:
        """Owners of the rows the statement read or wrote as actor; none if it was refused."""
        with acting(connect, world, actor) as conn:
            try:
                with conn.transaction():  # a savepoint, so a refusal leaves the audit usable
                    if self.writes:
                        return _written_owners(conn, statement)
                    return _read_owners(conn, statement)
            except REFUSALS:
                return set()

    def leaks(self, connect: Connect, world: World, actor: str) -> str | None:
        """None if the attack reached nothing that actor does not own, else what it reached."""
        control = self.control(world) if self.control else self.attack(world, "alice")
        reached = self.reached(connect, world, self.control_actor, control)
        owner = world.user_id(self.control_actor)
        assert owner in reached, f"positive control: {self.control_actor} reached {reached}"
        reached = self.reached(connect, world, actor, self.attack(world, actor))
        foreign = reached - {world.user_id(actor)}
        return (
            f"{self.action} on {self.table} reached rows of {sorted(foreign)}" if foreign else None
        )


def _fixed(template: str, table: str) -> Callable[[World, str], Statement]:
    """The same statement for every actor; %(id)s is the key of alice's row."""

    def statement(world: World, _actor: str) -> Statement:
        query = sql.SQL(template).format(
            table=sql.Identifier(table), key=sql.Identifier(key_of(table))
        )
        if template.startswith("copy"):
            return query, None
        return query, {"id": world.rows[table][world.alice]} if "%(id)s" in template else {}

    return statement


def _probes_for(table: str) -> list[Probe]:
    victim = claimed_victim(table)

    def insert_claiming_victim(world: World, _actor: str) -> Statement:
        values = _row_values(world, table, world.user_id(victim) or "")
        return insert_statement(table, values), values

    def upsert_over_alice(world: World, actor: str) -> Statement:
        # Where the key is the owner, reaching alice's row means claiming her id.
        claimed = world.alice if table in KEYS else world.user_id(actor) or world.alice
        values = {key_of(table): world.rows[table][world.alice]}
        values |= _row_values(world, table, claimed)
        return insert_statement(table, values, upsert=True), values

    def reown_own_rows(new_owner: str) -> Callable[[World], Statement]:
        # No WHERE: a WHERE would add the SELECT policy's check on the new row, and this
        # probe must fail on the UPDATE policy's WITH CHECK alone.
        def statement(world: World) -> Statement:
            query = sql.SQL("update {} set user_id = %(owner)s").format(sql.Identifier(table))
            return query, {"owner": world.user_id(new_owner)}

        return statement

    touch = "update {table} set updated_at = updated_at"
    by_id = " where {key} = %(id)s"
    return [
        Probe(table, "select by id", _fixed("select user_id from {table}" + by_id, table)),
        Probe(table, "select all", _fixed("select user_id from {table}", table)),
        Probe(table, "copy to", _fixed("copy (select user_id from {table}) to stdout", table)),
        Probe(table, "update by id", _fixed(touch + by_id, table), writes=True),
        Probe(table, "update without where", _fixed(touch, table), writes=True),
        Probe(
            table,
            "delete by id",
            _fixed("delete from {table}" + by_id, table),
            writes=True,
        ),
        Probe(table, "delete without where", _fixed("delete from {table}", table), writes=True),
        Probe(
            table,
            f"insert claiming {victim}",
            insert_claiming_victim,
            writes=True,
            control_actor=victim,
        ),
        Probe(table, "upsert over alice's row", upsert_over_alice, writes=True),
        # The actor hands the rows it can reach to the victim; the control: bob keeps his own.
        Probe(
            table,
            f"re-own rows to {victim}",
            lambda world, _actor: reown_own_rows(victim)(world),
            writes=True,
            control_actor="bob",
            control=reown_own_rows("bob"),
        ),
    ]


def _message_into_alices_conversation(world: World, actor: str) -> Statement:
    # The row would carry the actor's own user_id; the audit reports the conversation's owner.
    values = {
        "user_id": world.user_id(actor) or world.alice,
        "conversation_id": world.rows["conversation"][world.alice],
        "role": "user",
        "content": "x",
    }
    return insert_statement("message", values), values


PROBES = [probe for table in OWNED_TABLES for probe in _probes_for(table)] + [
    Probe(
        "message",
        "insert into alice's conversation",
        _message_into_alices_conversation,
        writes=True,
    )
]
