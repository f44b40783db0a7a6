"""Every use of psycopg's undocumented internals, in one place: a transaction opened in one batch.

`open_transaction` sends BEGIN and a few parameterised statements in libpq pipeline mode with a
single Sync, so they cost one round trip together: the round trip BEGIN costs anyway. Values
travel as bind parameters, never as literals, so pg_stat_activity.query shows only `$1`.
psycopg's own `pipeline()` cannot do this (it syncs after BEGIN: two round trips), and it sends
BEGIN itself only while the connection is idle, so it skips its BEGIN after ours and commits
or rolls back as usual.

Internals used, all present from psycopg 3.2 to the version capped in pyproject.toml:
`psycopg.generators.send` / `fetch_many` (drive libpq without blocking), `Connection.wait`
(run such a generator, cooperatively for asyncio) and `Connection.lock`. Without them, or
without pipeline support in libpq, the statements go through psycopg's public `execute()` one
after the other, after psycopg's own BEGIN: one extra round trip, announced once by a warning.
"""

import contextlib
import logging
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

logger = logging.getLogger(__name__)

Row = tuple[str | None, ...]
# _READ_WRITE: left unset, psycopg's BEGIN inherits default_transaction_read_only, which SQL run
# by an earlier client may have set on this connection; the pipeline's BEGIN says READ WRITE
# itself, and the fallback sets the same on psycopg's connection (idle, so the setter allows it).


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its text parameters (None is SQL NULL)."""

    sql: bytes
    params: Sequence[str | None] = ()


def _internals_available() -> bool:
    """Whether this psycopg and libpq have what the one-round-trip path drives."""
    try:
        from psycopg import generators
    except ImportError:  # a psycopg that moved or dropped the module: the fallback
        return False
    return (
        hasattr(generators, "send")
        and hasattr(generators, "fetch_many")
        and hasattr(psycopg.Connection, "wait")
        and hasattr(psycopg.AsyncConnection, "wait")
        and psycopg.Pipeline.is_supported()
    )


FAST_PATH = _internals_available()
_warned = False


def _warn_fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        message = (
            f"todo_rls: psycopg {psycopg.__version__} (libpq {pq.version()}) lacks the "
            "internals or the pipeline support todo_rls uses to open a scoped transaction in "
            "one round trip; each transaction costs one more round trip"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        logger.warning(message)


def _encode(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _pipeline(
    pgconn: Any, begin: bytes, statements: Sequence[Statement]
) -> Generator[Any, Any, list[list[Any]]]:
    """libpq generator: BEGIN and statements, one Sync; the results of each, in order."""
    from psycopg import generators

    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(begin, None)
        for statement in statements:
            # No parameter types: the server takes them from the statement (a function's
            # signature), as for psycopg's own text parameters.
            pgconn.send_query_params(statement.sql, [_encode(v) for v in statement.params])
        pgconn.pipeline_sync()
        yield from generators.send(pgconn)
        results = []
        for _ in range(len(statements) + 1):
            results.append((yield from generators.fetch_many(pgconn)))
        sync = yield from generators.fetch_many(pgconn)
        if not sync or sync[-1].status != pq.ExecStatus.PIPELINE_SYNC:
            raise psycopg.OperationalError("todo_rls: the pipeline did not end with its Sync")
    except BaseException:
        # A broken connection cannot leave pipeline mode; its error is the one to raise.
        if pgconn.status == pq.ConnStatus.OK:
            with contextlib.suppress(psycopg.Error):
                pgconn.exit_pipeline_mode()
        raise
    pgconn.exit_pipeline_mode()
    return results


def _rows(batches: list[list[Any]], statement_count: int, encoding: str) -> list[list[Row]]:
    """Raise the first error; else each statement's rows (BEGIN's result dropped)."""
    for batch in batches:
        for result in batch:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=encoding)
    rows = []
    for batch in batches[1 : statement_count + 1]:
        result = batch[-1]
        rows.append(
            [
                tuple(
                    None if value is None else bytes(value).decode(encoding)
                    for value in (result.get_value(r, c) for c in range(result.nfields))
                )
                for r in range(result.ntuples)
            ]
        )
    return rows


def _encoding(conn: psycopg.BaseConnection[Any]) -> str:
    return conn.info.encoding


def open_transaction(
    conn: psycopg.Connection[Any], begin: bytes, statements: Sequence[Statement]
) -> list[list[Row]]:
    """Open a transaction on an idle conn with begin, then run statements; their rows.

    Raises the first error any of them raised (the transaction is then aborted).
    """
    if not FAST_PATH:
        _warn_fallback()
        return _open_with_public_calls(conn, statements)
    with conn.lock:
        batches = conn.wait(_pipeline(conn.pgconn, begin, statements))
    return _rows(batches, len(statements), _encoding(conn))


async def open_transaction_async(
    conn: psycopg.AsyncConnection[Any], begin: bytes, statements: Sequence[Statement]
) -> list[list[Row]]:
    """The asyncio twin of open_transaction; waits without blocking the event loop."""
    if not FAST_PATH:
        _warn_fallback()
        return await _open_with_public_calls_async(conn, statements)
    async with conn.lock:
        batches = await conn.wait(_pipeline(conn.pgconn, begin, statements))
    return _rows(batches, len(statements), _encoding(conn))


def run_statements(
    conn: psycopg.Connection[Any], statements: Sequence[Statement]
) -> list[list[Row]]:
    """Run statements through psycopg's public API, never server-side prepared."""
    rows = []
    with conn.cursor() as cursor:
        for statement in statements:
            # prepare=False: a named prepared statement could be replaced by SQL the app runs.
            cursor.execute(_placeholders(statement), statement.params, prepare=False)
            fetched = cursor.fetchall() if cursor.description is not None else []
            rows.append([_text_row(row) for row in fetched])
    return rows


async def run_statements_async(
    conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
) -> list[list[Row]]:
    """The asyncio twin of run_statements."""
    rows = []
    async with conn.cursor() as cursor:
        for statement in statements:
            await cursor.execute(_placeholders(statement), statement.params, prepare=False)
            fetched = await cursor.fetchall() if cursor.description is not None else []
            rows.append([_text_row(row) for row in fetched])
    return rows


def _open_with_public_calls(
    conn: psycopg.Connection[Any], statements: Sequence[Statement]
) -> list[list[Row]]:
    # psycopg sends its own BEGIN (with the connection's isolation level and access mode)
    # before the first statement: one round trip more than the pipeline.
    if conn.read_only is None:
        conn.read_only = False  # see _READ_WRITE
    return run_statements(conn, statements)


async def _open_with_public_calls_async(
    conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
) -> list[list[Row]]:
    if conn.read_only is None:
        await conn.set_read_only(False)  # see _READ_WRITE
    return await run_statements_async(conn, statements)


def _placeholders(statement: Statement) -> bytes:
    # The statements use $1..$n (libpq's syntax); psycopg's execute() wants %s.
    sql = statement.sql
    for number in range(len(statement.params), 0, -1):
        sql = sql.replace(b"$%d" % number, b"%s")
    return sql


def _text_row(row: Sequence[Any]) -> Row:
    return tuple(None if value is None else str(value) for value in row)
