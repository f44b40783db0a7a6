"""Scoping a transaction to a user costs zero extra round trips (libpq protocol trace)."""

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from functools import partial

import pytest
import sqlalchemy
from sqlalchemy import Engine, text
from sqlmodel import Session

import todo_rls
from todo_rls import EngineSettings, scoped_session
from todo_rls import _psycopg_wire as wire
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


@pytest.fixture
def plain_engine(app_url: str) -> Iterator[Engine]:
    """SQLAlchemy's own engine, no todo_rls hook: what a transaction costs without the library."""
    engine = sqlalchemy.create_engine(app_url, pool_size=1, max_overflow=0)
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


def warm_up_plain(engine: Engine) -> None:
    for _ in range(WARM_UP_ROUNDS):
        run_transaction(Session(engine))


def test_trace_counts_plain_transaction_as_begin_query_commit(plain_engine: Engine) -> None:
    # Control for the counter: RLS-FACTS measured BEGIN, query, COMMIT = 3 round trips.
    warm_up_plain(plain_engine)
    plain = traced_batches(plain_engine, Session(plain_engine))
    assert len(plain) == 3, plain
    assert begins(plain[0]) == 1
    assert "COMMIT" in plain[-1]


def test_scoping_costs_zero_extra_round_trips(
    one_connection_engine: Engine, plain_engine: Engine, alice: str
) -> None:
    warm_up_plain(plain_engine)
    plain = traced_batches(plain_engine, Session(plain_engine))
    engine = one_connection_engine
    warm_up(engine, alice)
    scoped = traced_batches(engine, scoped_session(engine, alice))
    unscoped = traced_batches(engine, Session(engine))  # also reset, also in BEGIN's batch
    assert len(scoped) == len(unscoped) == len(plain), (plain, scoped, unscoped)


def test_without_psycopgs_internals_scoping_still_holds_at_one_more_round_trip(
    one_connection_engine: Engine, plain_engine: Engine, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm_up_plain(plain_engine)
    plain = traced_batches(plain_engine, Session(plain_engine))
    monkeypatch.setattr(wire, "FAST_PATH", False)  # as on a psycopg without them
    monkeypatch.setattr(wire, "_warned", False)
    engine = one_connection_engine
    with pytest.warns(RuntimeWarning, match="one more round trip"):
        warm_up(engine, alice)
    scoped = traced_batches(engine, scoped_session(engine, alice))
    assert len(scoped) == len(plain) + 1, (plain, scoped)
    with scoped_session(engine, alice) as session:
        who = session.connection().execute(text("select todo_rls.current_user_id()"))
        assert who.scalar_one() == alice


def test_scoped_transaction_sends_begin_and_the_scope_in_one_batch(
    one_connection_engine: Engine, alice: str
) -> None:
    engine = one_connection_engine
    warm_up(engine, alice)
    scoped = traced_batches(engine, scoped_session(engine, alice))
    assert sum(begins(batch) for batch in scoped) == 1, scoped
    first = scoped[0]
    assert begins(first) == 1, scoped
    # The user id travels only as begin_scope's bind parameter (the trace shows Bind's values).
    assert "todo_rls.begin_scope($1, $2, $3, $4, $5)" in first, scoped
    assert alice in first, scoped
