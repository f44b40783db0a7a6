"""Every transaction of todo_rls's engines starts clean, and a scoped one as a verified user.

The engines run a `begin` hook (install_transaction_scoping) that opens each transaction itself,
with one libpq pipeline batch (todo_rls._psycopg_wire): BEGIN, with the access mode always
spelled out, and ``select todo_rls.begin_scope($1, $2, $3, $4, $5)``, which runs RESET ALL and
then sets role, search_path, row_security, app.user_id and app.user_sig for this transaction
only. So nothing SQL of an earlier client left on a pooled connection (a context, a role,
row_security, a read-only default, a search path, statements prepared with SQL) reaches the
transaction, whether it is scoped or not; and a scoped transaction costs the round trip its
BEGIN costs anyway. The user's context is signed (todo_rls.identity) and sent as bind
parameters, so pg_stat_activity shows `$1`, never an id or a signature.

The role check (is RLS binding this role at all?) is a catalog query `todo-rls bench` measured
at most of the wrapper's old cost, so a connection runs it on its first scoped transaction and
again once ROLE_RECHECK_SECONDS have passed; in between, begin_scope's current_user must be the
role last checked, or it is checked at once. The verdict lives in the pool's per-connection
info, which dies with the connection.
"""

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from time import monotonic
from typing import Any

import psycopg
from psycopg import pq, sql
from sqlalchemy import Connection, Engine, event, orm
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from todo_rls import _psycopg_wire as wire
from todo_rls.errors import (
    ContextRejectedError,
    SchemaNotMigratedError,
    TamperedConnectionError,
    TodoRlsError,
    UnsafeRoleError,
)
from todo_rls.identity import DEFAULT_CONTEXT_TTL_SECONDS, KEY_ENV, SigningKey
from todo_rls.validation import validate_user_id

APP_ROLE = "todo_app"
DEFAULT_SEARCH_PATH = ("public",)
# How long a pooled connection trusts its last role check: an ALTER ROLE ... BYPASSRLS (or a
# new table owner) made while the app runs is refused within this many seconds.
ROLE_RECHECK_SECONDS = 60.0
# The execution option that carries a session's Scope to the connections it uses.
SCOPE_OPTION = "todo_rls_scope"


CONTEXT_TTL_ENV = "TODO_RLS_CONTEXT_TTL"
_APPROVED_ROLES_KEY = "todo_rls.role_checked"  # {set_role: (monotonic(), role)} per connection
# Set while a transaction the hook opened is open: an engine made by execution_options() runs
# its parent's listeners too, so the hook may be installed (and called) twice.
_OPEN_KEY = "todo_rls.transaction_open"
# Marks a session made here, so current_user_id() can tell.
_SCOPE_INFO_KEY = "todo_rls.scope"

_BEGIN_SCOPE = b"select todo_rls.begin_scope($1, $2, $3, $4, $5)"
# An unscoped transaction resets the same things without needing the migrations, so
# todo_rls's engines work on any database: RESET ALL, no WITH HOLD cursor or temporary object
# of an earlier request (they can hold its user's rows), then no role, no user, a fixed path.
_RESET = [
    wire.Statement(b"reset all"),
    wire.Statement(b"close all"),
    wire.Statement(b"discard temp"),
]
_CLEAR_SCOPE = b"""select pg_catalog.set_config('role', 'none', true),
       pg_catalog.set_config('search_path', $1, true),
       pg_catalog.set_config('row_security', 'on', true),
       pg_catalog.set_config('app.user_id', '', true),
       pg_catalog.set_config('app.user_sig', '', true)"""
# With autocommit there is no transaction to scope: reset at session level instead.
_RESET_SESSION = [*_RESET, wire.Statement(b"reset role")]
# Could RLS be silently off for the effective role? Superuser, BYPASSRLS, CREATEROLE (on
# PostgreSQL 15 and older it can grant itself any role), owner of a table with row-level security
# (in any schema), a member of a role that is any of these (one SET ROLE away), or a role that
# can read the signing keys (it could sign any user's context). Text, so that the pipeline and
# psycopg's public API return the same values.
_ROLE_CHECK = b"""
select r.rolname::text,
       r.rolsuper::text,
       r.rolbypassrls::text,
       r.rolcreaterole::text,
       exists (
         select from pg_catalog.pg_class c
         where c.relrowsecurity and pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
       )::text,
       exists (
         select from pg_catalog.pg_roles b
         where (b.rolsuper or b.rolbypassrls or b.rolcreaterole) and b.oid <> r.oid
           and pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
       )::text,
       coalesce(pg_catalog.has_table_privilege(
         r.oid, pg_catalog.to_regclass('todo_rls.signing_key'), 'SELECT'), false)::text
from pg_catalog.pg_roles r
where r.rolname = current_user
"""
_REASONS = (
    "is a superuser",
    "has BYPASSRLS",
    "has CREATEROLE",
    "owns the protected tables",
    "is a member of a superuser or BYPASSRLS role (or a CREATEROLE one)",
    "can read the signing keys (todo_rls.signing_key)",
)
# The isolation level a transaction gets when the engine names none: the role's, database's or
# server's default, which SET cannot change (it is what RESET restores). Read in the first
# transaction of each connection, whose session state is still its own, and named in every
# later BEGIN: a session-level default that SQL of an earlier request left (an injected
# `set default_transaction_isolation`) would otherwise reach the next request on the connection,
# since BEGIN fixes the level before begin_scope's RESET ALL runs.
_DEFAULT_ISOLATION = wire.Statement(
    b"select reset_val from pg_catalog.pg_settings where name = 'default_transaction_isolation'"
)
_DEFAULT_ISOLATION_KEY = "todo_rls.default_isolation"
_ISOLATION_LEVELS = {
    psycopg.IsolationLevel.READ_UNCOMMITTED: "isolation level read uncommitted",
    psycopg.IsolationLevel.READ_COMMITTED: "isolation level read committed",
    psycopg.IsolationLevel.REPEATABLE_READ: "isolation level repeatable read",
    psycopg.IsolationLevel.SERIALIZABLE: "isolation level serializable",
}


@dataclass(frozen=True)
class Scope:
    """Who a session acts for, how its context is signed, and what each transaction sets."""

    user_id: str
    signing_key: SigningKey = field(repr=False)
    context_ttl: int = DEFAULT_CONTEXT_TTL_SECONDS
    set_role: str | None = None
    search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH


def current_user_id(session: orm.Session) -> str:
    """The user a scoped session acts for.

    Returns the user id given to scoped_session / scoped_async_session. Raises TypeError if
    session was not made by one of them.
    """
    scope = session.info.get(_SCOPE_INFO_KEY)
    if not isinstance(scope, Scope):
        raise TypeError("session is not scoped; create it with todo_rls.scoped_session()")
    return scope.user_id


def _begin_sql(conn: psycopg.BaseConnection[Any], default_isolation: str | None) -> bytes:
    """BEGIN with the connection's isolation level (else default_isolation, when known) and
    access mode, the latter always given."""
    # SQLAlchemy's isolation_level, postgresql_readonly and postgresql_deferrable options are set
    # on the psycopg connection; a bare BEGIN would drop them, and would inherit a level or a
    # read-only default that SQL of an earlier client may have left at session level.
    words = ["begin"]
    if conn.isolation_level is not None:
        words.append(_ISOLATION_LEVELS[psycopg.IsolationLevel(conn.isolation_level)])
    elif default_isolation is not None:
        words.append(default_isolation)
    words.append("read only" if conn.read_only else "read write")
    if conn.deferrable is not None:
        words.append("deferrable" if conn.deferrable else "not deferrable")
    return " ".join(words).encode()


def _search_path(conn: psycopg.BaseConnection[Any], schemas: Sequence[str]) -> str:
    """schemas, quoted, then pg_temp: a temporary table can never stand in for a real one."""
    names = [sql.Identifier(schema) for schema in schemas] + [sql.SQL("pg_temp")]
    return sql.SQL(", ").join(names).as_string(conn)


def _statements(
    conn: psycopg.BaseConnection[Any], scope: Scope | None, check_role: bool
) -> list[wire.Statement]:
    """What follows BEGIN: clear the scope, or set it (and check the role, when due)."""
    if scope is None:
        path = _search_path(conn, DEFAULT_SEARCH_PATH)
        return [*_RESET, wire.Statement(_CLEAR_SCOPE, [path])]
    prepares = "true" if conn.prepare_threshold is not None else "false"
    signature = scope.signing_key.sign(scope.user_id, scope.context_ttl)
    path = _search_path(conn, scope.search_path)
    params = [scope.user_id, signature, path, scope.set_role, prepares]
    statements = [wire.Statement(_BEGIN_SCOPE, params)]
    if check_role:
        statements.append(wire.Statement(_ROLE_CHECK))
    return statements


def _approved_role_or_raise(rows: list[wire.Row], scope: Scope) -> str:
    """The role, if RLS binds it; else UnsafeRoleError naming why and what to do."""
    if not rows:  # current_user has no pg_roles row: it was dropped under us
        raise UnsafeRoleError("the current database role no longer exists")
    role, *flags = rows[0]
    reasons = [why for flag, why in zip(flags, _REASONS, strict=True) if flag == "true"]
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
    return str(role)


def _translate(error: psycopg.Error, scope: Scope | None, login: str) -> Exception:
    """The library's own error for what begin_scope refused, else error itself."""
    message = str(error)
    if isinstance(error, psycopg.errors.UndefinedFunction) and "begin_scope" in message:
        return SchemaNotMigratedError(
            "this database lacks todo_rls.begin_scope(): apply todo-rls's migrations "
            "(todo-rls migrate --url OWNER_URL)"
        )
    if isinstance(error, psycopg.errors.ObjectNotInPrerequisiteState) and message.startswith(
        "todo_rls:"
    ):
        return TamperedConnectionError(
            f"{message}; the connection was discarded. SQL run on it earlier (an injection?) "
            "ran PREPARE, which could replace the statements psycopg prepared"
        )
    if (
        scope is not None
        and scope.set_role is not None
        and isinstance(error, psycopg.errors.InsufficientPrivilege)
    ):
        return UnsafeRoleError(
            f"cannot switch to role {scope.set_role!r}: {error}; an administrator "
            f"must run: grant {scope.set_role} to {login}"
        )
    return error


def _recently_approved_role(connection_info: dict[Any, Any], scope: Scope) -> str | None:
    """The role this connection's last passing role check approved, if that check is younger
    than ROLE_RECHECK_SECONDS; None: the next transaction checks the role again."""
    checks: dict[str | None, tuple[float, str]] = connection_info.get(_APPROVED_ROLES_KEY, {})
    at, role = checks.get(scope.set_role, (None, None))
    if at is None or monotonic() - at >= ROLE_RECHECK_SECONDS:
        return None
    return role


def _remember_approved_role(connection_info: dict[Any, Any], scope: Scope, role: str) -> None:
    connection_info.setdefault(_APPROVED_ROLES_KEY, {})[scope.set_role] = (monotonic(), role)


def _default_isolation(rows: list[wire.Row]) -> str:
    """BEGIN's words for the level pg_settings' reset_val names (one of four, checked)."""
    level = f"isolation level {rows[0][0]}" if rows else ""
    if level not in _ISOLATION_LEVELS.values():
        raise TodoRlsError(f"unexpected default_transaction_isolation: {rows!r}")
    return level


Opener = Callable[[bytes, list[wire.Statement]], list[list[wire.Row]]]
Runner = Callable[[list[wire.Statement]], list[list[wire.Row]]]


def _opener(dbapi_connection: Any) -> tuple[psycopg.BaseConnection[Any], Opener, Runner]:
    """The psycopg connection, and how to open a transaction on it / run statements in one."""
    if isinstance(dbapi_connection, psycopg.Connection):
        raw = dbapi_connection

        def open_sync(begin: bytes, statements: list[wire.Statement]) -> list[list[wire.Row]]:
            return wire.open_transaction(raw, begin, statements)

        def run_sync(statements: list[wire.Statement]) -> list[list[wire.Row]]:
            return wire.run_statements(raw, statements)

        return raw, open_sync, run_sync
    if isinstance(dbapi_connection, AdaptedConnection):  # the asyncio adapter
        adapted = dbapi_connection
        raw_async: psycopg.AsyncConnection[Any] = adapted.driver_connection

        def open_async(begin: bytes, statements: list[wire.Statement]) -> list[list[wire.Row]]:
            result: list[list[wire.Row]] = adapted.run_async(
                lambda conn: wire.open_transaction_async(conn, begin, statements)
            )
            return result

        def run_async(statements: list[wire.Statement]) -> list[list[wire.Row]]:
            result: list[list[wire.Row]] = adapted.run_async(
                lambda conn: wire.run_statements_async(conn, statements)
            )
            return result

        return raw_async, open_async, run_async
    raise TypeError(
        "todo_rls needs the psycopg 3 driver: use a postgresql+psycopg:// URL "
        "(todo_rls.create_engine does this for you)"
    )


def _begin_transaction(connection: Connection) -> None:
    """The engines' `begin` hook: open the transaction clean, and scoped when asked."""
    scope = connection.get_execution_options().get(SCOPE_OPTION)
    pooled = connection.connection  # its .info lives exactly as long as the DBAPI connection
    raw, open_transaction, run = _opener(pooled.dbapi_connection)
    if raw.autocommit:
        if scope is not None:
            raise TodoRlsError(
                "scoped sessions need transactions: the user is set for one transaction, and "
                "with isolation_level='AUTOCOMMIT' each statement is one; drop that option"
            )
        # No transaction to open: reset what an earlier client left at session level instead.
        run(_RESET_SESSION)
        return
    if raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        if pooled.info.get(_OPEN_KEY):
            return  # opened by this hook, installed on this engine and on one it derives from
        raise TodoRlsError(
            "the connection is already in a transaction that todo_rls did not open; "
            "use sessions and connections of todo_rls.create_engine() only"
        )
    approved = _recently_approved_role(pooled.info, scope) if scope is not None else None
    needs_check = scope is not None and approved is None
    default_isolation: str | None = pooled.info.get(_DEFAULT_ISOLATION_KEY)
    statements = _statements(raw, scope, needs_check)
    if default_isolation is None:  # this connection's first transaction (see _DEFAULT_ISOLATION)
        statements.append(_DEFAULT_ISOLATION)
    try:
        rows = open_transaction(_begin_sql(raw, default_isolation), statements)
        pooled.info[_OPEN_KEY] = True
        if default_isolation is None:
            pooled.info[_DEFAULT_ISOLATION_KEY] = _default_isolation(rows[-1])
        if scope is None:
            return
        role = rows[0][0][0] or ""
        if needs_check:
            _remember_approved_role(pooled.info, scope, _approved_role_or_raise(rows[1], scope))
        elif role != approved:
            # Not the role that was approved: check this one now (one more round trip, rarely).
            rows = run([wire.Statement(_ROLE_CHECK)])
            _remember_approved_role(pooled.info, scope, _approved_role_or_raise(rows[0], scope))
    except psycopg.Error as error:
        translated = _translate(error, scope, raw.info.user)
        broken = isinstance(error, psycopg.OperationalError) or raw.broken
        if broken or isinstance(translated, TamperedConnectionError):
            pooled.invalidate(error)
        if translated is not error:
            raise translated from error
        # As SQLAlchemy raises driver errors: callers catch DBAPIError / OperationalError.
        raise DBAPIError.instance(
            "BEGIN; select todo_rls.begin_scope(...)",
            None,
            error,
            psycopg.Error,
            connection_invalidated=broken,
        ) from error


def _transaction_ended(connection: Connection) -> None:
    if not connection.invalidated:  # an invalidated one takes its info with it
        connection.connection.info[_OPEN_KEY] = False


def install_transaction_scoping(engine: Engine) -> None:
    """Make every transaction engine opens start clean (and scoped, in scoped sessions).

    todo_rls.create_engine and create_async_engine call this; scoped_session calls it on any
    Engine it is given, so a plain SQLAlchemy engine is scoped too. Idempotent.
    """
    # Each listener goes on the object whose dispatch holds it: SQLAlchemy files a listener under
    # (id(target), event, id(fn)) until that dispatch is freed, and handle_error's is the
    # dialect's. Filed under the engine, it outlived an engine whose dialect lived on, and a new
    # engine at the freed address looked installed already: refusals came out untranslated.
    for target, name, listener in (
        (engine, "begin", _begin_transaction),
        (engine, "commit", _transaction_ended),
        (engine, "rollback", _transaction_ended),
        (engine.dialect, "handle_error", _context_error),
    ):
        if not event.contains(target, name, listener):
            event.listen(target, name, listener)


def _context_error(context: Any) -> None:
    """Raise ContextRejectedError for a context the verifier refused (SQLSTATE 28000)."""
    error = context.original_exception
    if not isinstance(error, psycopg.errors.InvalidAuthorizationSpecification):
        return
    primary, hint = error.diag.message_primary or "", error.diag.message_hint
    if primary.startswith("todo_rls:"):
        raise ContextRejectedError(f"{primary}{f'. {hint}' if hint else ''}") from error


@lru_cache(maxsize=8)
def _key_from_text(text: str) -> SigningKey:
    return SigningKey.from_hex(text, KEY_ENV)


@lru_cache(maxsize=8)
def _ttl_from_text(text: str) -> int:
    try:
        ttl = int(text)
    except ValueError:
        ttl = 0
    if not 5 <= ttl <= 3600:
        raise TodoRlsError(f"{CONTEXT_TTL_ENV}={text!r} is not valid; allowed: 5 to 3600 seconds")
    return ttl


def _signing_key(given: SigningKey | str | None) -> SigningKey:
    if isinstance(given, SigningKey):
        return given
    if isinstance(given, str):
        return _key_from_text(given)
    if given is not None:
        raise TypeError(
            "signing_key must be a SigningKey, a hex str, or None ($TODO_RLS_SIGNING_KEY)"
        )
    text = os.environ.get(KEY_ENV, "")
    return _key_from_text(text) if text.strip() else SigningKey.from_env()


def _scope(
    user_id: object,
    signing_key: SigningKey | str | None,
    set_role: str | None,
    search_path: Sequence[str],
) -> Scope:
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
    ttl_text = os.environ.get(CONTEXT_TTL_ENV, "").strip()
    ttl = _ttl_from_text(ttl_text) if ttl_text else DEFAULT_CONTEXT_TTL_SECONDS
    return Scope(
        validate_user_id(user_id), _signing_key(signing_key), ttl, set_role, tuple(search_path)
    )


_ENGINE_ONLY = (
    "{} needs an {}, not a connection: a session bound to a connection shares its transaction "
    "with code outside the session, and app.user_id would outlive the session"
)


@contextmanager
def scoped_session(
    engine: Engine,
    user_id: str,
    *,
    signing_key: SigningKey | str | None = None,
    set_role: str | None = None,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    **kwargs: Any,
) -> Iterator[Session]:
    """A Session whose every transaction sees and writes only user_id's rows.

    Not SQLAlchemy's ``scoped_session`` (a thread-local registry): this one scopes to a user.
    Each transaction carries user_id signed with signing_key (default: $TODO_RLS_SIGNING_KEY),
    which the database verifies. set_role switches to that role (e.g. ``"todo_app"``) inside
    each transaction, for deployments that log in as a role RLS does not bind. search_path is
    the transaction's schema search path (pg_temp is added last). kwargs go to Session().

    Returns (as a context manager) a Session scoped to user_id, closed on exit.
    Raises InvalidUserIdError, SigningKeyError, ValueError or TypeError for bad arguments,
    before anything reaches the database. Its transactions raise UnsafeRoleError for a role
    RLS does not bind, ContextRejectedError if the database refuses the context (say, the key
    is not installed: `todo-rls keys add`).
    """
    scope = _scope(user_id, signing_key, set_role, search_path)
    if not isinstance(engine, Engine):
        raise TypeError(_ENGINE_ONLY.format("scoped_session", "Engine"))
    install_transaction_scoping(engine)
    bind = engine.execution_options(**{SCOPE_OPTION: scope})
    with Session(bind, info={_SCOPE_INFO_KEY: scope}, **kwargs) as session:
        yield session


@asynccontextmanager
async def scoped_async_session(
    engine: AsyncEngine,
    user_id: str,
    *,
    signing_key: SigningKey | str | None = None,
    set_role: str | None = None,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    **kwargs: Any,
) -> AsyncIterator[AsyncSession]:
    """The asyncio twin of scoped_session; run sync helpers with ``await session.run_sync``.

    Returns (as an async context manager) an AsyncSession scoped to user_id. Raises what
    scoped_session raises, and TypeError if engine is not an AsyncEngine.
    """
    scope = _scope(user_id, signing_key, set_role, search_path)
    if not isinstance(engine, AsyncEngine):
        raise TypeError(_ENGINE_ONLY.format("scoped_async_session", "AsyncEngine"))
    install_transaction_scoping(engine.sync_engine)
    bind = engine.execution_options(**{SCOPE_OPTION: scope})
    async with AsyncSession(bind, info={_SCOPE_INFO_KEY: scope}, **kwargs) as session:
        yield session
