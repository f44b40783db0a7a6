"""Scoping a transaction to a user costs zero extra round trips (libpq protocol trace)."""

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from functools import partial

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

import todo_rls
from todo_rls import EngineSettings, scoped_session
from todo_rls.bench.roundtrips import batches, traced

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


def traced_batches(engine: Engine, session_cm: AbstractContextManager[Session]) -> list[str]:
    """The round trips of one run_transaction on engine, from checkout (before BEGIN) to checkin."""
    return batches(traced(engine, partial(run_transaction, session_cm)))


def begins(batch: str) -> int:
    return len(re.findall(r"\bbegin\b", batch, flags=re.IGNORECASE))


def warm_up(engine: Engine, user_id: str) -> None:
    for _ in range(WARM_UP_ROUNDS):
        run_transaction(scoped_session(engine, user_id))
        run_transaction(Session(engine))


def test_trace_counts_plain_transaction_as_begin_query_commit(
    one_connection_engine: Engine, alice: str
) -> None:
    # Control for the counter: RLS-FACTS measured BEGIN, query, COMMIT = 3 round trips.
    warm_up(one_connection_engine, alice)
    plain = traced_batches(one_connection_engine, Session(one_connection_engine))
    assert len(plain) == 3, plain
    assert begins(plain[0]) == 1
    assert "COMMIT" in plain[-1]


def test_scoping_costs_zero_extra_round_trips(one_connection_engine: Engine, alice: str) -> None:
    engine = one_connection_engine
    warm_up(engine, alice)
    plain = traced_batches(engine, Session(engine))
    scoped = traced_batches(engine, scoped_session(engine, alice))
    assert len(scoped) == len(plain), f"plain: {plain}\nscoped: {scoped}"


def test_scoped_transaction_sends_begin_and_set_config_in_one_batch(
    one_connection_engine: Engine, alice: str
) -> None:
    engine = one_connection_engine
    warm_up(engine, alice)
    scoped = traced_batches(engine, scoped_session(engine, alice))
    assert sum(begins(batch) for batch in scoped) == 1, scoped
    first = scoped[0]
    assert begins(first) == 1, scoped
    # The user id travels only as set_config's argument (a prepared statement's Bind shows no
    # query text), so it marks that call.
    assert alice in first, scoped
