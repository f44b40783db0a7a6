"""What the wrapper's per-transaction role check costs, on the server and per transaction."""

import statistics
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine
from sqlmodel import Session

from todo_rls.bench.timing import interleaved
from todo_rls.session import _SET_USER_AND_INSPECT_ROLE, scoped_session

_SET_USER_ONLY = sql.SQL("select pg_catalog.set_config('app.user_id', {user_id}, true)")


def _server_ms(conn: psycopg.Connection[Any], query: sql.Composed, runs: int) -> float:
    """Median planning + execution time of query on the server (EXPLAIN ANALYZE), in ms."""
    explain = sql.SQL("explain (analyze, format json) ") + query
    times = []
    for _ in range(runs):
        with conn.transaction():
            plan = conn.execute(explain).fetchall()[0]
        times.append(float(plan[0][0]["Planning Time"] + plan[0][0]["Execution Time"]))
    return statistics.median(times)


def role_check_cost(
    conn: psycopg.Connection[Any], engine: Engine, user_id: str, iterations: int
) -> dict[str, float]:
    """Server time of set_config with and without the role check; the wrapper's transaction.

    conn and engine log in as the app role. Each transaction runs only `select 1` and commits,
    so the difference between scoped and unscoped is all the wrapper adds per transaction.
    """
    literal = sql.Literal(user_id)
    with_check = _server_ms(conn, _SET_USER_AND_INSPECT_ROLE.format(user_id=literal), iterations)
    without = _server_ms(conn, _SET_USER_ONLY.format(user_id=literal), iterations)

    def scoped(_: int) -> None:
        with scoped_session(engine, user_id) as session:
            session.connection().exec_driver_sql("select 1")
            session.commit()

    def unscoped(_: int) -> None:
        with Session(engine) as session:
            session.connection().exec_driver_sql("select 1")
            session.commit()

    scoped_timing, unscoped_timing = interleaved([scoped, unscoped], iterations)
    return {
        "server_set_config_with_check_ms": round(with_check, 4),
        "server_set_config_only_ms": round(without, 4),
        "server_check_ms": round(with_check - without, 4),
        "select_1_scoped_median_ms": round(scoped_timing.median_ms, 4),
        "select_1_unscoped_median_ms": round(unscoped_timing.median_ms, 4),
    }
