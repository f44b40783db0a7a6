"""Engines from DATABASE_URL: pool settings, pre-ping, connect retries, PgBouncer mode.

Every transaction of these engines is opened by todo_rls.session's hook: clean, and scoped to a
verified user inside scoped_session().
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy import URL, Engine, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.util import await_only
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from todo_rls.errors import DatabaseUnavailableError, DatabaseUrlError
from todo_rls.session import install_transaction_scoping
from todo_rls.settings import load_settings

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg_async"}

# SQLSTATE classes that no retry can fix: bad password (28), no such database (3D).
_PERMANENT_SQLSTATE_CLASSES = ("28", "3D")
# libpq gives no SQLSTATE for a refused connection (psycopg's error.sqlstate is None there), so
# the server's message is all that tells a typo from a waking compute. Unknown (for example
# translated) messages are retried, as before.
_PERMANENT_CONNECT_MESSAGES = (
    "does not exist",  # no such database (3D000) or role (28000)
    "password authentication failed",  # 28P01
    "no pg_hba.conf entry",  # 28000
    "permission denied for database",  # 42501: no CONNECT privilege
    "SSL was required",  # sslmode=require (or verify-*) against a server without TLS
    "channel binding required",  # channel_binding=require without SCRAM over TLS
)


def database_url(url: str | None = None) -> URL:
    """Parse url (default: $DATABASE_URL) into a psycopg 3 URL, or say what to fix."""
    raw = url if url is not None else load_settings().database_url
    if not raw:
        raise DatabaseUrlError(
            "DATABASE_URL is not set: export DATABASE_URL=postgresql://USER:PASSWORD@HOST/DBNAME"
        )
    try:
        parsed = make_url(raw)
    except ArgumentError as error:
        raise DatabaseUrlError(
            "DATABASE_URL is not a URL; expected postgresql://USER:PASSWORD@HOST/DBNAME"
        ) from error
    if parsed.drivername not in _POSTGRES_SCHEMES:
        raise DatabaseUrlError(
            f"DATABASE_URL scheme {parsed.drivername!r} is not PostgreSQL; use postgresql:// "
            "(postgres:// and postgresql+psycopg:// are accepted too)"
        )
    return parsed.set(drivername="postgresql+psycopg")


def is_pgbouncer_url(url: URL) -> bool:
    """Whether url points at a transaction-mode pooler (Neon's pooled hosts end in -pooler)."""
    return "-pooler." in (url.host or "")


def _connect_args(
    url: URL, pgbouncer: bool | None, prepared_statements: bool | None, connect_timeout: int
) -> dict[str, Any]:
    args: dict[str, Any] = {"connect_timeout": connect_timeout}
    behind_pgbouncer = pgbouncer if pgbouncer is not None else is_pgbouncer_url(url)
    # PgBouncer before 1.21 cannot route server-side prepared statements between clients. Off,
    # psycopg sends every statement unnamed, which nothing on the server can replace; on, each
    # transaction first checks that no statement was prepared with SQL (see session.py).
    if not (prepared_statements if prepared_statements is not None else not behind_pgbouncer):
        args["prepare_threshold"] = None
    return args


def _is_transient(error: BaseException) -> bool:
    if not isinstance(error, psycopg.OperationalError):
        return False
    sqlstate = error.sqlstate or ""
    if sqlstate.startswith(_PERMANENT_SQLSTATE_CLASSES):
        return False
    message = str(error)
    return not any(permanent in message for permanent in _PERMANENT_CONNECT_MESSAGES)


def _retry_connect(
    engine: Engine, attempts: int, max_wait: float, sleep: Callable[[float], None]
) -> None:
    """Retry new connections with exponential backoff: Neon wakes a suspended compute slowly."""

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=0.2, max=max_wait),  # full jitter, capped
            retry=retry_if_exception(_is_transient),
            sleep=sleep,
        )
        try:
            return retrying(dialect.connect, *cargs, **cparams)
        except RetryError as error:  # only raised when every attempt failed transiently
            last = error.last_attempt.exception()
            where = f"{cparams.get('host') or 'localhost'}:{cparams.get('port') or 5432}"
            raise DatabaseUnavailableError(
                f"could not connect to PostgreSQL at {where} after {attempts} attempts: {last}. "
                "Check that the server runs and DATABASE_URL names it."
            ) from last


def _async_sleep(seconds: float) -> None:
    await_only(asyncio.sleep(seconds))


@dataclass(frozen=True)
class EngineSettings:
    """Pool and connection settings shared by the sync and async engines."""

    # None: detect Neon's pooled host (-pooler); True for any transaction-mode PgBouncer.
    pgbouncer: bool | None = None
    # Server-side prepared statements (psycopg prepares a query on its 5th run). None: on,
    # unless behind PgBouncer. docs/benchmarks.md measures both.
    prepared_statements: bool | None = None
    pool_size: int = 5
    max_overflow: int = 5
    pool_timeout: float = 10.0
    # Recycle before a Neon compute's idle suspend or a proxy's idle cut can bite.
    pool_recycle: int = 300
    # One round trip per checkout, so a connection killed by a suspend is never handed out.
    pre_ping: bool = True
    connect_timeout: int = 10
    connect_attempts: int = 5
    max_backoff: float = 5.0

    @classmethod
    def from_env(cls) -> "EngineSettings":
        """The TODO_RLS_* environment variables (see todo_rls.settings), defaults elsewhere."""
        env = load_settings()
        return cls(
            pgbouncer=env.pgbouncer_flag,
            prepared_statements=env.prepared_statements_flag,
            pool_size=env.pool_size,
            max_overflow=env.max_overflow,
            pool_timeout=env.pool_timeout,
            pool_recycle=env.pool_recycle,
            pre_ping=env.pre_ping,
            connect_timeout=env.connect_timeout,
            connect_attempts=env.connect_attempts,
            max_backoff=env.max_backoff,
        )

    def engine_options(self, url: URL) -> dict[str, Any]:
        """Keyword arguments for sqlalchemy's create_engine / create_async_engine."""
        return {
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.pool_timeout,
            "pool_recycle": self.pool_recycle,
            "pool_pre_ping": self.pre_ping,
            "connect_args": _connect_args(
                url, self.pgbouncer, self.prepared_statements, self.connect_timeout
            ),
        }


def create_engine(
    url: str | None = None, settings: EngineSettings | None = None, **kwargs: Any
) -> Engine:
    """A sync engine for url (default $DATABASE_URL); kwargs go to sqlalchemy.create_engine.

    Without settings, pool and connection settings come from TODO_RLS_* variables
    (EngineSettings.from_env); a settings object given here is used as it is.
    """
    settings = settings or EngineSettings.from_env()
    parsed = database_url(url)
    engine = sqlalchemy.create_engine(parsed, **(settings.engine_options(parsed) | kwargs))
    _retry_connect(engine, settings.connect_attempts, settings.max_backoff, sleep=time.sleep)
    install_transaction_scoping(engine)
    return engine


def create_async_engine(
    url: str | None = None, settings: EngineSettings | None = None, **kwargs: Any
) -> AsyncEngine:
    """The asyncio twin of create_engine; backoff sleeps without blocking the event loop."""
    settings = settings or EngineSettings.from_env()
    parsed = database_url(url)
    engine = _create_async_engine(parsed, **(settings.engine_options(parsed) | kwargs))
    _retry_connect(
        engine.sync_engine, settings.connect_attempts, settings.max_backoff, sleep=_async_sleep
    )
    install_transaction_scoping(engine.sync_engine)
    return engine
