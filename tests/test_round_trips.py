"""Scoping a transaction to a user costs zero extra round trips (libpq protocol trace)."""

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlmodel import Session

import todo_rls
from todo_rls import EngineSettings, scoped_session

QUERY = text("select count(*) from public.task")
# psycopg prepares a statement on its 5th use, paying one extra round trip once: warm up past it.
WARM_UP_ROUNDS = 8


@pytest.fixture
def one_connection_engine(app_url: str) -> Iterator[Engine]:
    """The library's engine with a single pooled connection, so every session reuses it."""
    engine = todo_rls.create_engine(app_url, EngineSettings(pool_size=1, max_overflow=0))
    yield engine
    engine.dispose()


def run_transaction(session_cm: AbstractContextManager[Session]) -> None:
    """One SELECT, then COMMIT: the shape of a typical request."""
    with session_cm as session:
        session.connection().execute(QUERY).scalar_one()
        session.commit()


def traced(engine: Engine, session_cm: AbstractContextManager[Session], path: Path) -> list[str]:
    """The libpq trace lines of one run_transaction, from checkout (before BEGIN) to checkin."""

    def start(dbapi_connection: Any, *_: Any) -> None:
        pgconn = dbapi_connection.pgconn
        pgconn.trace(trace_file.fileno())
        # After trace(): PQtrace resets the flags.
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)

    def stop(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.pgconn.untrace()  # flushes the trace

    with path.open("wb") as trace_file:
        event.listen(engine, "checkout", start)
        event.listen(engine, "checkin", stop)
        try:
            run_transaction(session_cm)
        finally:
            event.remove(engine, "checkout", start)
            event.remove(engine, "checkin", stop)
    return path.read_text().splitlines()


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


def begins(batch: str) -> int:
    return len(re.findall(r"\bbegin\b", batch, flags=re.IGNORECASE))


def warm_up(engine: Engine, user_id: str) -> None:
    for _ in range(WARM_UP_ROUNDS):
        run_transaction(scoped_session(engine, user_id))
        run_transaction(Session(engine))


def test_trace_counts_plain_transaction_as_begin_query_commit(
    one_connection_engine: Engine, alice: str, tmp_path: Path
) -> None:
    # Control for the counter: RLS-FACTS measured BEGIN, query, COMMIT = 3 round trips.
    warm_up(one_connection_engine, alice)
    plain = batches(traced(one_connection_engine, Session(one_connection_engine), tmp_path / "t"))
    assert len(plain) == 3, plain
    assert begins(plain[0]) == 1
    assert "COMMIT" in plain[-1]


def test_scoping_costs_zero_extra_round_trips(
    one_connection_engine: Engine, alice: str, tmp_path: Path
) -> None:
    engine = one_connection_engine
    warm_up(engine, alice)
    plain = batches(traced(engine, Session(engine), tmp_path / "plain"))
    scoped = batches(traced(engine, scoped_session(engine, alice), tmp_path / "scoped"))
    assert len(scoped) == len(plain), f"plain: {plain}\nscoped: {scoped}"


def test_scoped_transaction_sends_begin_and_set_config_in_one_batch(
    one_connection_engine: Engine, alice: str, tmp_path: Path
) -> None:
    engine = one_connection_engine
    warm_up(engine, alice)
    scoped = batches(traced(engine, scoped_session(engine, alice), tmp_path / "scoped"))
    assert sum(begins(batch) for batch in scoped) == 1, scoped
    first = scoped[0]
    assert begins(first) == 1, scoped
    # The user id travels only as set_config's argument (a prepared statement's Bind shows no
    # query text), so it marks that call.
    assert alice in first, scoped
