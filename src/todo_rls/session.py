"""Sessions whose every transaction is scoped to one user by a transaction-local app.user_id.

The scope is set in SQLAlchemy's ``after_begin`` hook, so it covers the first transaction and
every one after a commit or a rollback. psycopg's pipeline mode sends BEGIN, the optional
``set_config('role', ...)`` and the scoping ``set_config('app.user_id', ..., true)`` in one round
trip, which is the round trip the app's first query would have paid for BEGIN anyway.
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from todo_rls.errors import InvalidUserIdError, UnsafeRoleError

APP_ROLE = "todo_app"
USER_ID_MAX_LENGTH = 255
_SCOPE_KEY = "todo_rls.scope"

_SET_ROLE = "select pg_catalog.set_config('role', %s, true)"
# Sets the user for this transaction only, and reports whether RLS could be silently off for
# the effective role: superuser, BYPASSRLS, or (a member of) the owner of an owned table.
_SET_USER_AND_INSPECT_ROLE = """
select pg_catalog.set_config('app.user_id', %s, true),
       r.rolname::text,
       r.rolsuper,
       r.rolbypassrls,
       exists (
         select from pg_catalog.pg_class c
         where c.relnamespace = 'public'::regnamespace
           and c.relname in ('task', 'conversation', 'message')
           and pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
       )
from pg_catalog.pg_roles r
where r.rolname = current_user
"""


@dataclass(frozen=True)
class Scope:
    """Who a session acts for, and which role (if any) to switch to in each transaction."""

    user_id: str
    set_role: str | None = None


def validate_user_id(user_id: object) -> str:
    """Return user_id if it can name a user, else raise InvalidUserIdError saying why."""
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user id must be a str, not {type(user_id).__name__}")
    if not user_id.strip():
        raise InvalidUserIdError("user id is empty or blank; pass the authenticated user's id")
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise InvalidUserIdError(
            f"user id is {len(user_id)} characters; at most {USER_ID_MAX_LENGTH} are allowed"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in user_id):
        raise InvalidUserIdError("user id contains a control character (such as NUL)")
    return user_id


def current_user_id(session: Session) -> str:
    """The user a scoped session acts for; raises if session was not made by this module."""
    scope = session.info.get(_SCOPE_KEY)
    if not isinstance(scope, Scope):
        raise TypeError("session is not scoped; create it with todo_rls.scoped_session()")
    return scope.user_id


def _check_role(row: tuple[Any, ...] | None, scope: Scope) -> None:
    if row is None:  # current_user has no pg_roles row: it was dropped under us
        raise UnsafeRoleError("the current database role no longer exists")
    _, role, superuser, bypassrls, owns_tables = row
    reason = (
        "is a superuser"
        if superuser
        else "has BYPASSRLS"
        if bypassrls
        else "owns the protected tables"
        if owns_tables
        else None
    )
    if reason is not None:
        hint = (
            f"connect as a login role that is a member of {APP_ROLE} "
            f"(or pass set_role={APP_ROLE!r} to switch to it in each transaction)"
            if scope.set_role is None
            else f"role {scope.set_role!r} must not be a superuser, BYPASSRLS or a table owner"
        )
        raise UnsafeRoleError(
            f"refusing scoped work: role {role!r} {reason}, so row-level security "
            f"would not protect its queries; {hint}"
        )


def _scope_sync(conn: psycopg.Connection[Any], scope: Scope) -> None:
    with conn.pipeline():
        if scope.set_role is not None:
            conn.execute(_SET_ROLE, (scope.set_role,))
        cursor = conn.execute(_SET_USER_AND_INSPECT_ROLE, (scope.user_id,))
    _check_role(cursor.fetchone(), scope)


async def _scope_async(conn: psycopg.AsyncConnection[Any], scope: Scope) -> None:
    async with conn.pipeline():
        if scope.set_role is not None:
            await conn.execute(_SET_ROLE, (scope.set_role,))
        cursor = await conn.execute(_SET_USER_AND_INSPECT_ROLE, (scope.user_id,))
    _check_role(await cursor.fetchone(), scope)


class _ScopedSession(Session):
    """A SQLModel Session that scopes each transaction to session.info's Scope."""


@event.listens_for(_ScopedSession, "after_begin")
def _scope_transaction(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    scope: Scope = session.info[_SCOPE_KEY]
    dbapi_connection = connection.connection.dbapi_connection
    if isinstance(dbapi_connection, psycopg.Connection):
        _scope_sync(dbapi_connection, scope)
    elif isinstance(dbapi_connection, AdaptedConnection):  # the asyncio adapter
        dbapi_connection.run_async(lambda raw: _scope_async(raw, scope))
    else:
        raise TypeError(
            "todo_rls needs the psycopg 3 driver: use a postgresql+psycopg:// URL "
            "(todo_rls.create_engine does this for you)"
        )


def _scope(user_id: object, set_role: str | None) -> Scope:
    if set_role is not None and (not isinstance(set_role, str) or not set_role):
        raise ValueError("set_role must be a role name such as 'todo_app', or None")
    return Scope(validate_user_id(user_id), set_role)


@contextmanager
def scoped_session(
    engine: Engine | Connection, user_id: str, *, set_role: str | None = None, **kwargs: Any
) -> Iterator[Session]:
    """A Session whose every transaction sees and writes only user_id's rows.

    Not SQLAlchemy's ``scoped_session`` (a thread-local registry): this one scopes to a user.
    set_role switches to that role (e.g. ``"todo_app"``) inside each transaction, for
    deployments that log in as a role RLS does not bind. kwargs go to Session().
    """
    scope = _scope(user_id, set_role)
    with _ScopedSession(engine, info={_SCOPE_KEY: scope}, **kwargs) as session:
        yield session


@asynccontextmanager
async def scoped_async_session(
    engine: AsyncEngine, user_id: str, *, set_role: str | None = None, **kwargs: Any
) -> AsyncIterator[AsyncSession]:
    """The asyncio twin of scoped_session; run sync helpers with ``await session.run_sync``."""
    scope = _scope(user_id, set_role)
    async with AsyncSession(
        engine, sync_session_class=_ScopedSession, info={_SCOPE_KEY: scope}, **kwargs
    ) as session:
        yield session
