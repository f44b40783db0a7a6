"""Client/server round trips of one transaction, counted from libpq's protocol trace.

Moved here from tests/test_round_trips.py's helpers so the bench and the tests count alike.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event


def batches(trace: list[str]) -> list[str]:
    """Client messages grouped by round trip: each group ends where the server starts answering.

    A group is the text of its messages; a line that starts with neither F nor B continues the
    previous message (a query text with newlines).
    """
    groups: list[str] = []
    sending: list[str] = []
    receiving = False
    for line in trace:
        direction = line.split("\t", 1)[0]
        if direction == "F":
            sending.append(line)
            receiving = False
        elif direction == "B":
            if sending:
                groups.append("\n".join(sending))
                sending = []
            receiving = True
        elif not receiving and sending:
            sending[-1] += "\n" + line
    return groups


def traced(engine: Engine, transaction: Callable[[], object]) -> list[str]:
    """The libpq trace lines of transaction(), from pool checkout to checkin.

    The engine should hold one connection (pool_size=1), warmed up, so the trace sees no
    connect and no first-time statement preparation.
    """

    def start(dbapi_connection: Any, *_: Any) -> None:
        pgconn = dbapi_connection.pgconn
        pgconn.trace(trace_file.fileno())
        # After trace(): PQtrace resets the flags.
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)

    def stop(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.pgconn.untrace()  # flushes the trace

    with tempfile.TemporaryDirectory(prefix="todo-rls-trace-") as folder:
        path = Path(folder) / "trace"
        with path.open("wb") as trace_file:
            event.listen(engine, "checkout", start)
            event.listen(engine, "checkin", stop)
            try:
                transaction()
            finally:
                event.remove(engine, "checkout", start)
                event.remove(engine, "checkin", stop)
        return path.read_text().splitlines()


def round_trips(engine: Engine, transaction: Callable[[], object]) -> int:
    """How many round trips transaction() takes on engine."""
    return len(batches(traced(engine, transaction)))
