"""Server time of the pieces of a scoped transaction, and what opening one costs end to end.

- the verifier, per call (the slope over many calls in one statement) and per statement, in the
  first statement of a transaction that calls it and in a later one;
- begin_scope (what each scoped transaction runs, with and without its check for statements
  prepared with SQL) against a bare set_config of the user id;
- the role check, which runs on a connection's first scoped transaction and then at most once a
  minute per connection (ADR 0007), never on every transaction;
- an empty (`select 1`) transaction opened each way, wall-clock and client CPU.
Server times are EXPLAIN ANALYZE's planning + execution; each is the median of `runs`.
"""

import statistics
import timeit
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine
from sqlmodel import Session

from todo_rls.bench.patterns import Pattern
from todo_rls.bench.setup import render
from todo_rls.bench.sides import (
    PLAIN,
    SCOPED,
    SCOPED_UNPREPARED,
    SET_CONFIG,
    Targets,
    engines,
    request,
    side_engine,
)
from todo_rls.bench.subjects import Subject
from todo_rls.bench.timing import interleaved
from todo_rls.identity import DEFAULT_CONTEXT_TTL_SECONDS, SigningKey
from todo_rls.session import (
    _ROLE_CHECK,
    SCOPE_OPTION,
    _scope,
    _search_path,
    install_transaction_scoping,
)

# Calls per statement for the per-call slope: long enough to dwarf the statement itself.
CALLS = 2000

_BEGIN_SCOPE = "select todo_rls.begin_scope(%s, %s, 'public, pg_temp', null, %s)"
_SET_USER = "select pg_catalog.set_config('app.user_id', %s, true)"
_VERIFIER = "select todo_rls.current_user_id()"
_SETTING = "select pg_catalog.current_setting('app.user_id', true)"
# The comparison references g, so it runs once per row (a qual without a column would be a
# one-time filter).
_VERIFIER_ROWS = (
    "select count(*) from pg_catalog.generate_series(1, %s) g"
    " where todo_rls.current_user_id() = g::text"
)
_SETTING_ROWS = (
    "select count(*) from pg_catalog.generate_series(1, %s) g"
    " where pg_catalog.current_setting('app.user_id', true) = g::text"
)


def _server_ms(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> float:
    """Planning + execution time of one query on the server (EXPLAIN ANALYZE), in ms."""
    explain = sql.SQL("explain (analyze, timing off, format json) ") + sql.SQL(query)
    plan = conn.execute(explain, params).fetchall()[0][0][0]
    return float(plan["Planning Time"] + plan["Execution Time"])


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def server_costs(
    conn: psycopg.Connection[Any], key: SigningKey, user_id: str, runs: int
) -> dict[str, Any]:
    """The server's side, measured on conn as the app login (prepare_threshold None)."""
    signature = key.sign(user_id, DEFAULT_CONTEXT_TTL_SECONDS)
    times: dict[str, list[float]] = {}

    def timed(name: str, query: str, params: tuple[Any, ...] = ()) -> None:
        times.setdefault(name, []).append(_server_ms(conn, query, params))

    for _ in range(runs):
        with conn.transaction():  # each of these is the transaction's first statement
            timed("begin_scope_checking_prepared", _BEGIN_SCOPE, (user_id, signature, True))
        with conn.transaction():
            timed("begin_scope", _BEGIN_SCOPE, (user_id, signature, False))
        with conn.transaction():
            timed("set_config", _SET_USER, (user_id,))
        with conn.transaction():
            timed("role_check", _ROLE_CHECK.decode())
        for first, later, query in (
            ("verifier_first", "verifier_later", _VERIFIER),
            ("setting_first", "setting_later", _SETTING),
        ):
            with conn.transaction():
                conn.execute(_BEGIN_SCOPE, (user_id, signature, False))
                timed(first, query)
                timed(later, query)
    calls: dict[str, list[float]] = {}
    for _ in range(max(runs // 10, 3)):
        with conn.transaction():
            conn.execute(_BEGIN_SCOPE, (user_id, signature, False))
            calls.setdefault("verifier", []).append(_server_ms(conn, _VERIFIER_ROWS, (CALLS,)))
            calls.setdefault("setting", []).append(_server_ms(conn, _SETTING_ROWS, (CALLS,)))
    median = {name: _median(values) for name, values in times.items()}
    per_call_us = statistics.median(calls["verifier"]) - statistics.median(calls["setting"])
    return {
        "server_ms": median,
        # What a policy's verifier adds to a statement, over reading the bare setting.
        "verifier_per_statement_us": {
            "first": round((median["verifier_first"] - median["setting_first"]) * 1000, 1),
            "later": round((median["verifier_later"] - median["setting_later"]) * 1000, 1),
        },
        "verifier_per_call_us": round(per_call_us * 1000 / CALLS, 2),
        "begin_scope_over_set_config_us": round(
            (median["begin_scope"] - median["set_config"]) * 1000, 1
        ),
        "prepared_check_us": round(
            (median["begin_scope_checking_prepared"] - median["begin_scope"]) * 1000, 1
        ),
        "role_check_us": round(median["role_check"] * 1000, 1),
    }


def client_costs(
    conn: psycopg.Connection[Any], engine: Engine, key: SigningKey, user_id: str
) -> dict[str, float]:
    """The wrapper's own Python, in µs per call, without the database: what scoped_session
    does per session (validate the id and read the key, make sure its hook is installed, bind
    the scope to the engine) and the begin hook per transaction (quote the search path, sign).
    conn and engine are only read (engine is one of todo_rls's, so its hook is installed)."""
    loops = 2000
    pieces: dict[str, Callable[[], object]] = {
        "scope_us": lambda: _scope(user_id, None, None, ("public",)),
        "install_hook_us": lambda: install_transaction_scoping(engine),
        "execution_options_us": lambda: engine.execution_options(**{SCOPE_OPTION: None}),
        "search_path_us": lambda: _search_path(conn, ("public",)),
        "sign_us": lambda: key.sign(user_id, DEFAULT_CONTEXT_TTL_SECONDS),
    }
    return {
        name: round(timeit.timeit(piece, number=loops) / loops * 1e6, 1)
        for name, piece in pieces.items()
    }


def _select_1(session: Session) -> None:
    session.connection().exec_driver_sql("select 1")


SELECT_1 = Pattern("select 1", lambda session, _subject: _select_1(session))


def empty_transactions(
    targets: Targets, key: SigningKey, subject: Subject, iterations: int
) -> dict[str, Any]:
    """A `select 1` transaction as the app login, opened each way: wall-clock and client CPU.

    scoped: the wrapper (begin_scope, prepared-statement check); scoped_unprepared: the same
    without the check; set_config: one BEGIN + set_config message; plain: SQLAlchemy's own
    BEGIN. Same login for all, so only the way the transaction opens differs.
    """
    sides = (SCOPED, SCOPED_UNPREPARED, SET_CONFIG, PLAIN)
    # plain on the app login too: select 1 reads no table, so no policy is involved.
    same_login = Targets(targets.app_url, targets.app_url)
    with engines(same_login, sides, key) as by_side:
        actions = [request(side, by_side[side], key, SELECT_1, [subject]) for side in sides]
        timings = interleaved(actions, iterations)
    return {
        side.name: {"median_ms": round(t.median_ms, 4), "client_cpu_ms": round(t.cpu_median_ms, 4)}
        for side, t in zip(sides, timings, strict=True)
    }


def measure_server_costs(
    targets: Targets, key: SigningKey, subject: Subject, iterations: int
) -> dict[str, Any]:
    """Everything above, for one subject."""
    with psycopg.connect(render(targets.app_url.set(drivername="postgresql"))) as conn:
        conn.prepare_threshold = None
        costs = server_costs(conn, key, subject.user_id, iterations)
        app = side_engine(targets, SCOPED, key)
        try:
            client = client_costs(conn, app, key, subject.user_id)
        finally:
            app.dispose()
    return costs | {
        "client_us": client,
        "empty_transaction": empty_transactions(targets, key, subject, iterations),
    }
