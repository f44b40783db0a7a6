"""Sessions whose every transaction is scoped to one user by a transaction-local app.user_id.

The scope is set in SQLAlchemy's ``after_begin`` hook, so it covers the first transaction and
every one after a commit or a rollback. It goes out as one simple-query message,
``BEGIN; [SELECT set_config('role', ...);] SELECT set_config('search_path', ...); SELECT
set_config('app.user_id', <literal>, true), ...``,
which opens the transaction itself: psycopg sends its own BEGIN only on an idle connection, so
it skips it, and scoping costs no round trip beyond the BEGIN the transaction pays anyway.
Values are quoted by psycopg.sql.Literal, never by string formatting.

The role check (is RLS binding this role at all?) is a catalog query the server parses and
plans every time; `todo-rls bench` measured it at most of the wrapper's cost. So a connection
runs it on its first scoped transaction and again once ROLE_RECHECK_SECONDS have passed;
between checks only set_config goes out, with current_user, and a role other than the checked
one (say a session-level SET ROLE another client left behind a transaction-mode PgBouncer) is
checked at once. The verdict lives in the pool's per-connection info,
which dies with the connection (invalidation, pool_recycle, dispose).
"""

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from time import monotonic
from typing import Any

import psycopg
from psycopg import generators, pq, sql
from sqlalchemy import Connection, Engine, event, orm
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from todo_rls.errors import UnsafeRoleError
from todo_rls.validation import validate_user_id

APP_ROLE = "todo_app"
_SCOPE_KEY = "todo_rls.scope"
# How long a pooled connection trusts its last role check: an ALTER ROLE ... BYPASSRLS (or a
# new table owner) made while the app runs is refused within this many seconds.
ROLE_RECHECK_SECONDS = 60.0
_ROLE_CHECKED_KEY = "todo_rls.role_checked"  # {set_role: (monotonic(), role)} per connection

_SET_ROLE = sql.SQL("select pg_catalog.set_config('role', {role}, true)")
# A fixed path for this transaction, with pg_temp named last. pg_temp is searched first unless
# the path names it, and a path left at session level on a pooled connection by another client
# (say "pg_temp, public", or "") cannot be trusted either: either way a temp table called "task"
# would catch the next user's rows instead of public.task.
_SEARCH_PATH = sql.SQL("select pg_catalog.set_config('search_path', {path}, true)")
DEFAULT_SEARCH_PATH = ("public",)
# Sets the user for this transaction only, and reports whether RLS could be silently off for
# the effective role: superuser, BYPASSRLS, owner of a table with row-level security (in any
# schema: an app's own owned tables too), or a member of a role that is any of these (one SET
# ROLE away).
_SET_USER = sql.SQL(
    "select pg_catalog.set_config('app.user_id', {user_id}, true), current_user::text"
)
_SET_USER_AND_INSPECT_ROLE = sql.SQL("""
select pg_catalog.set_config('app.user_id', {user_id}, true),
       r.rolname::text,
       r.rolsuper,
       r.rolbypassrls,
       r.rolcreaterole,
       exists (
         select from pg_catalog.pg_class c
         where c.relrowsecurity
           and pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
       ),
       exists (
         select from pg_catalog.pg_roles b
         where (b.rolsuper or b.rolbypassrls or b.rolcreaterole) and b.oid <> r.oid
           and pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
       )
from pg_catalog.pg_roles r
where r.rolname = current_user
""")


@dataclass(frozen=True)
class Scope:
    """Who a session acts for, the role to switch to (if any) and the schemas to search."""

    user_id: str
    set_role: str | None = None
    search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH


def current_user_id(session: orm.Session) -> str:
    """The user a scoped session acts for; raises if session was not made by this module."""
    scope = session.info.get(_SCOPE_KEY)
    if not isinstance(scope, Scope):
        raise TypeError("session is not scoped; create it with todo_rls.scoped_session()")
    return scope.user_id


def _check_role(row: list[bytes | None] | None, scope: Scope) -> None:
    if row is None:  # current_user has no pg_roles row: it was dropped under us
        raise UnsafeRoleError("the current database role no longer exists")
    role = (row[1] or b"").decode()
    superuser, bypassrls, createrole, owns_tables, can_become_bypass = (
        value == b"t" for value in row[2:]
    )
    reasons = [
        why
        for flag, why in (
            (superuser, "is a superuser"),
            (bypassrls, "has BYPASSRLS"),
            # On PostgreSQL 15 and older, CREATEROLE can grant itself any non-superuser role,
            # a BYPASSRLS one or the tables' owner included.
            (createrole, "has CREATEROLE"),
            (owns_tables, "owns the protected tables"),
            (
                can_become_bypass,
                "is a member of a superuser or BYPASSRLS role (or a CREATEROLE one)",
            ),
        )
        if flag
    ]
    if reasons:
        hint = (
            f"connect as a login role that is only a member of {APP_ROLE} "
            f"(or pass set_role={APP_ROLE!r} to switch to it in each transaction)"
            if scope.set_role is None
            else f"set_role={scope.set_role!r} must name a role RLS binds, such as {APP_ROLE!r}"
        )
        raise UnsafeRoleError(
            f"refusing scoped work: role {role!r} {' and '.join(reasons)}, so row-level security "
            f"would not protect its queries; {hint}"
        )


_ISOLATION_LEVELS = {
    psycopg.IsolationLevel.READ_UNCOMMITTED: "isolation level read uncommitted",
    psycopg.IsolationLevel.READ_COMMITTED: "isolation level read committed",
    psycopg.IsolationLevel.REPEATABLE_READ: "isolation level repeatable read",
    psycopg.IsolationLevel.SERIALIZABLE: "isolation level serializable",
}


def _begin(conn: psycopg.BaseConnection[Any]) -> sql.SQL:
    """The BEGIN psycopg would have sent, with the connection's isolation and access mode."""
    # SQLAlchemy's isolation_level, postgresql_readonly and postgresql_deferrable options are
    # set on the psycopg connection; a bare BEGIN would silently drop them.
    words = ["begin"]
    if conn.isolation_level is not None:
        words.append(_ISOLATION_LEVELS[psycopg.IsolationLevel(conn.isolation_level)])
    if conn.read_only is not None:
        words.append("read only" if conn.read_only else "read write")
    if conn.deferrable is not None:
        words.append("deferrable" if conn.deferrable else "not deferrable")
    return sql.SQL(" ".join(words))


def _scope_query(conn: psycopg.BaseConnection[Any], scope: Scope, check_role: bool) -> bytes:
    statements: list[sql.Composable] = []
    if conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        statements.append(_begin(conn))
    if scope.set_role is not None:
        statements.append(_SET_ROLE.format(role=sql.Literal(scope.set_role)))
    schemas = [sql.Identifier(schema) for schema in scope.search_path] + [sql.SQL("pg_temp")]
    path = sql.SQL(", ").join(schemas).as_string(conn)
    statements.append(_SEARCH_PATH.format(path=sql.Literal(path)))
    set_user = _SET_USER_AND_INSPECT_ROLE if check_role else _SET_USER
    statements.append(set_user.format(user_id=sql.Literal(scope.user_id)))
    return sql.SQL("; ").join(statements).as_bytes(conn)


def _check_results(
    results: list[pq.abc.PGresult],
    conn: psycopg.BaseConnection[Any],
    scope: Scope,
    check_role: bool,
) -> str:
    """Raise the first error; with check_role, refuse an unsafe role. The effective role."""
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
            if scope.set_role is not None and isinstance(
                error, psycopg.errors.InsufficientPrivilege
            ):
                raise UnsafeRoleError(
                    f"cannot switch to role {scope.set_role!r}: {error}; an administrator "
                    f"must run: grant {scope.set_role} to {conn.info.user}"
                ) from error
            raise error
    last = results[-1]
    row = [last.get_value(0, column) for column in range(last.nfields)] if last.ntuples else None
    if check_role:
        _check_role(row, scope)
    return (row[1] or b"").decode() if row else ""


def _scope_sync(conn: psycopg.Connection[Any], scope: Scope, check_role: bool) -> str:
    query = _scope_query(conn, scope, check_role)
    with conn.lock:
        conn.pgconn.send_query(query)
        results = conn.wait(generators.execute(conn.pgconn))
    return _check_results(results, conn, scope, check_role)


async def _scope_async(conn: psycopg.AsyncConnection[Any], scope: Scope, check_role: bool) -> str:
    query = _scope_query(conn, scope, check_role)
    async with conn.lock:
        conn.pgconn.send_query(query)
        results = await conn.wait(generators.execute(conn.pgconn))
    return _check_results(results, conn, scope, check_role)


def _checked_role(connection_info: dict[Any, Any], scope: Scope) -> str | None:
    """The role this connection's last passing check saw, if that check is still fresh."""
    checked: dict[str | None, tuple[float, str]] = connection_info.get(_ROLE_CHECKED_KEY, {})
    at, role = checked.get(scope.set_role, (None, None))
    if at is None or monotonic() - at >= ROLE_RECHECK_SECONDS:
        return None
    return role


def _role_checked(connection_info: dict[Any, Any], scope: Scope, role: str) -> None:
    connection_info.setdefault(_ROLE_CHECKED_KEY, {})[scope.set_role] = (monotonic(), role)


class _ScopedSession(Session):
    """A SQLModel Session that scopes each transaction to session.info's Scope."""


@event.listens_for(_ScopedSession, "after_begin")
def _scope_transaction(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    scope: Scope = session.info[_SCOPE_KEY]
    pooled = connection.connection  # its .info lives exactly as long as the DBAPI connection
    dbapi_connection = pooled.dbapi_connection
    if isinstance(dbapi_connection, psycopg.Connection):
        raw = dbapi_connection

        def scope_with(check_role: bool) -> str:
            return _scope_sync(raw, scope, check_role)

    elif isinstance(dbapi_connection, AdaptedConnection):  # the asyncio adapter
        adapted = dbapi_connection

        def scope_with(check_role: bool) -> str:
            return str(adapted.run_async(lambda raw: _scope_async(raw, scope, check_role)))

    else:
        raise TypeError(
            "todo_rls needs the psycopg 3 driver: use a postgresql+psycopg:// URL "
            "(todo_rls.create_engine does this for you)"
        )
    checked_role = _checked_role(pooled.info, scope)
    role = scope_with(check_role=checked_role is None)
    if checked_role is not None and role != checked_role:
        # Not the role that was checked: check this one now (one extra round trip, rarely).
        checked_role = None
        role = scope_with(check_role=True)
    if checked_role is None:  # only a check that passed is remembered
        _role_checked(pooled.info, scope, role)


def _scope(user_id: object, set_role: str | None, search_path: Sequence[str]) -> Scope:
    if set_role is not None and (not isinstance(set_role, str) or not set_role):
        raise ValueError("set_role must be a role name such as 'todo_app', or None")
    if (
        isinstance(search_path, str)
        or not search_path
        or not all(isinstance(schema, str) and schema for schema in search_path)
        or any(schema.lower() == "pg_temp" for schema in search_path)
    ):
        raise ValueError(
            "search_path must be a non-empty sequence of schema names such as ('public',); "
            "pg_temp is always added last"
        )
    return Scope(validate_user_id(user_id), set_role, tuple(search_path))


_ENGINE_ONLY = (
    "{} needs an {}, not a connection: a session bound to a connection shares its transaction "
    "with code outside the session, and app.user_id would outlive the session"
)


@contextmanager
def scoped_session(
    engine: Engine,
    user_id: str,
    *,
    set_role: str | None = None,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    **kwargs: Any,
) -> Iterator[Session]:
    """A Session whose every transaction sees and writes only user_id's rows.

    Not SQLAlchemy's ``scoped_session`` (a thread-local registry): this one scopes to a user.
    set_role switches to that role (e.g. ``"todo_app"``) inside each transaction, for
    deployments that log in as a role RLS does not bind. search_path is the transaction's
    schema search path (pg_temp is added last). kwargs go to Session().
    """
    scope = _scope(user_id, set_role, search_path)
    if not isinstance(engine, Engine):
        raise TypeError(_ENGINE_ONLY.format("scoped_session", "Engine"))
    with _ScopedSession(engine, info={_SCOPE_KEY: scope}, **kwargs) as session:
        yield session


@asynccontextmanager
async def scoped_async_session(
    engine: AsyncEngine,
    user_id: str,
    *,
    set_role: str | None = None,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    **kwargs: Any,
) -> AsyncIterator[AsyncSession]:
    """The asyncio twin of scoped_session; run sync helpers with ``await session.run_sync``."""
    scope = _scope(user_id, set_role, search_path)
    if not isinstance(engine, AsyncEngine):
        raise TypeError(_ENGINE_ONLY.format("scoped_async_session", "AsyncEngine"))
    async with AsyncSession(
        engine, sync_session_class=_ScopedSession, info={_SCOPE_KEY: scope}, **kwargs
    ) as session:
        yield session
