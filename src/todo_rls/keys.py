"""Signing keys in a database: install, list and retire them (`todo-rls keys`), as the owner.

The verifier caches the key ring in each backend's plans; every change to todo_rls.signing_key
makes each backend recompile it at its next call (a trigger calls
todo_rls.refresh_signing_keys()), so a retired key is refused from the next statement on.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from todo_rls.errors import SchemaNotMigratedError, TodoRlsError
from todo_rls.identity import SigningKey


class KeyAdminError(TodoRlsError):
    """A key command cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class InstalledKey:
    """One row of todo_rls.signing_key, without its secret."""

    key_id: str
    created_at: datetime
    retire_at: datetime | None

    def status(self, now: datetime) -> str:
        """active, retiring (still accepted until retire_at) or retired."""
        if self.retire_at is None:
            return "active"
        return "retiring" if self.retire_at > now else "retired"


def _require_schema(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("select pg_catalog.to_regclass('todo_rls.signing_key')").fetchone()
    if row is None or row[0] is None:
        raise SchemaNotMigratedError(
            "this database has no todo_rls.signing_key: apply the migrations first "
            "(todo-rls migrate --url OWNER_URL)"
        )


@contextmanager
def _as_owner() -> Iterator[None]:
    """Permission errors become KeyAdminError naming the role to use."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as error:
        raise KeyAdminError(
            f"{error.diag.message_primary}; run todo-rls keys as the role that applied the "
            "migrations (the owner URL, for Neon the direct one), not as the app's login"
        ) from error


def _change(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> int:
    """Run one change as the owner; its row count."""
    with _as_owner(), conn.transaction():
        return conn.execute(query, params).rowcount


def add(conn: psycopg.Connection[Any], key: SigningKey) -> bool:
    """Install key (idempotent); False if it was installed already. A retired key stays so."""
    _require_schema(conn)
    inner, outer = key.pads()
    added = _change(
        conn,
        "insert into todo_rls.signing_key (key_id, inner_pad, outer_pad) values (%s, %s, %s)"
        " on conflict (key_id) do nothing",
        (key.key_id, inner, outer),
    )
    return added == 1


def installed(conn: psycopg.Connection[Any]) -> list[InstalledKey]:
    """Every installed key, oldest first (no secrets)."""
    _require_schema(conn)
    with _as_owner():
        rows = conn.execute(
            "select key_id, created_at, retire_at from todo_rls.signing_key"
            " order by created_at, key_id"
        ).fetchall()
    return [InstalledKey(str(k), c, r) for k, c, r in rows]


def retire(conn: psycopg.Connection[Any], key_id: str, after: timedelta) -> datetime:
    """Stop accepting key_id once `after` has passed (0: now); the retirement time.

    Raises KeyAdminError for an unknown key, or when it would leave no active key.
    """
    _require_schema(conn)
    keys = {k.key_id: k for k in installed(conn)}
    if key_id not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise KeyAdminError(f"no installed key has id {key_id!r} (installed: {known})")
    others = [k for k in keys.values() if k.key_id != key_id and k.retire_at is None]
    if not others:
        raise KeyAdminError(
            f"key {key_id} is the only active key: add its successor first "
            "(TODO_RLS_SIGNING_KEY=<new key> todo-rls keys add), deploy the app with it, "
            "then retire this one"
        )
    row = conn.execute("select pg_catalog.now() + %s", (after,)).fetchone()
    assert row is not None
    at: datetime = row[0]
    _change(
        conn,
        "update todo_rls.signing_key set retire_at = least(coalesce(retire_at, %s), %s)"
        " where key_id = %s",
        (at, at, key_id),
    )
    return at


def remove(conn: psycopg.Connection[Any], key_id: str) -> bool:
    """Delete key_id outright (a run's throwaway key); False if it was not installed. Keys of
    a deployment are retired instead, so a rotation never cuts off requests in flight."""
    _require_schema(conn)
    removed = _change(conn, "delete from todo_rls.signing_key where key_id = %s", (key_id,))
    return removed == 1
