"""Each measurement of a bench run, on engines for (a) the app role and (b) the bypass role."""

import sys
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import URL, Engine

from todo_rls.bench.patterns import (
    PATTERNS,
    Pattern,
    explicit_session,
    run_explicit,
    run_scoped,
    run_set_user_only,
)
from todo_rls.bench.plans import index_scans_only, plan_of
from todo_rls.bench.proxy import DelayProxy
from todo_rls.bench.rolecheck import role_check_cost
from todo_rls.bench.roundtrips import round_trips
from todo_rls.bench.setup import render
from todo_rls.bench.subjects import Subject
from todo_rls.bench.throughput import throughput
from todo_rls.bench.timing import WARM_UP, interleaved, ratio
from todo_rls.engine import EngineSettings, create_engine
from todo_rls.session import scoped_session

# The request the round-trip, latency and throughput figures are about: the app's most common.
REQUEST = PATTERNS[0]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def engine(url: URL, connections: int = 1) -> Engine:
    """The library's engine (pre-ping and all) with exactly `connections` pooled connections."""
    return create_engine(render(url), EngineSettings(pool_size=connections, max_overflow=0))


Request = Callable[[int], object]


def _requests(
    pattern: Pattern, app: Engine, bypass: Engine, subjects: list[Subject]
) -> tuple[Request, Request, Request]:
    """(a), (a') and (b) of pattern, the i-th request acting for the i-th subject (cycling)."""

    def scoped(i: int) -> None:
        run_scoped(app, pattern, subjects[i % len(subjects)])

    def set_user_only(i: int) -> None:
        run_set_user_only(app, pattern, subjects[i % len(subjects)])

    def explicit(i: int) -> None:
        run_explicit(bypass, pattern, subjects[i % len(subjects)])

    return scoped, set_user_only, explicit


def measure_patterns(
    app: Engine, bypass: Engine, subjects: list[Subject], iterations: int
) -> list[dict[str, Any]]:
    """Median, p95, ratio and scan nodes of every pattern, (a) and (b) interleaved."""
    results = []
    for pattern in PATTERNS:
        _say(f"measuring {pattern.name} ...")
        rls, bare, hand = interleaved(list(_requests(pattern, app, bypass, subjects)), iterations)
        # Plans for a typical user (the median of the subjects) and for the heaviest one,
        # whose share of a table may make a sequential scan the planner's right choice.
        typical, heaviest = subjects[len(subjects) // 2], subjects[0]
        plan_rls = plan_of(scoped_session(app, typical.user_id), pattern, typical)
        plan_explicit = plan_of(explicit_session(bypass, typical.user_id), pattern, typical)
        plan_heaviest = plan_of(scoped_session(app, heaviest.user_id), pattern, heaviest)
        results.append(
            {
                "name": pattern.name,
                "rls_median_ms": round(rls.median_ms, 4),
                "rls_p95_ms": round(rls.p95_ms, 4),
                "rls_without_check_median_ms": round(bare.median_ms, 4),
                "rls_without_check_p95_ms": round(bare.p95_ms, 4),
                "explicit_median_ms": round(hand.median_ms, 4),
                "explicit_p95_ms": round(hand.p95_ms, 4),
                "ratio": ratio(rls.median_ms, hand.median_ms),
                "ratio_without_check": ratio(bare.median_ms, hand.median_ms),
                "plan_rls": plan_rls,
                "plan_explicit": plan_explicit,
                "plan_heaviest_user_rls": plan_heaviest,
                "heaviest_user_tasks": heaviest.tasks,
                "index_scans_only": index_scans_only(plan_rls) and index_scans_only(plan_explicit),
            }
        )
    return results


def measure_round_trips(app_url: URL, bypass_url: URL, subject: Subject) -> dict[str, int]:
    """Round trips of one warmed-up REQUEST transaction, scoped and unscoped."""
    app, bypass = engine(app_url), engine(bypass_url)
    try:
        scoped, _, explicit = _requests(REQUEST, app, bypass, [subject])
        for i in range(WARM_UP):
            scoped(i)
            explicit(i)
        counts = {
            "scoped": round_trips(app, lambda: scoped(0)),
            "unscoped": round_trips(bypass, lambda: explicit(0)),
        }
    finally:
        app.dispose()
        bypass.dispose()
    return counts | {"extra": counts["scoped"] - counts["unscoped"]}


def _upstream(url: URL) -> str | tuple[str, int]:
    host = str(url.query.get("host") or url.host or "localhost")
    port = url.port or 5432
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _through(url: URL, port: int) -> URL:
    return url.difference_update_query(["host"]).set(host="127.0.0.1", port=port)


def measure_latency(
    app_url: URL, bypass_url: URL, subjects: list[Subject], rtt_ms: float, iterations: int
) -> dict[str, float]:
    """REQUEST's median latency through the delay proxy: (a), (a') and (b), interleaved."""
    with DelayProxy(_upstream(app_url), rtt_ms) as proxy:
        app, bypass = (
            engine(_through(app_url, proxy.port)),
            engine(_through(bypass_url, proxy.port)),
        )
        try:
            rls, bare, hand = interleaved(
                list(_requests(REQUEST, app, bypass, subjects)), iterations
            )
        finally:
            app.dispose()
            bypass.dispose()
    return {
        "rtt_ms": rtt_ms,
        "scoped_median_ms": round(rls.median_ms, 3),
        "scoped_without_check_median_ms": round(bare.median_ms, 3),
        "unscoped_median_ms": round(hand.median_ms, 3),
        "ratio": ratio(rls.median_ms, hand.median_ms),
        "ratio_without_check": ratio(bare.median_ms, hand.median_ms),
    }


def measure_throughput(
    app_url: URL,
    bypass_url: URL,
    subjects: list[Subject],
    threads: int,
    seconds: float,
    rounds: int,
) -> dict[str, float]:
    """REQUEST transactions per second with `threads` clients: (a), (a') and (b)."""
    app, bypass = engine(app_url, threads), engine(bypass_url, threads)
    try:
        requests = list(_requests(REQUEST, app, bypass, subjects))
        rls, bare, hand = throughput(requests, threads, seconds, rounds)
    finally:
        app.dispose()
        bypass.dispose()
    return {
        "threads": threads,
        "seconds_per_turn": seconds,
        "turns_per_side": rounds,
        "scoped_tps": round(rls, 1),
        "scoped_without_check_tps": round(bare, 1),
        "unscoped_tps": round(hand, 1),
        "ratio": ratio(rls, hand),
        "ratio_without_check": ratio(bare, hand),
    }


def measure_role_check(app_url: URL, subject: Subject, iterations: int) -> dict[str, float]:
    """The wrapper's role check: server time, and an empty scoped vs unscoped transaction."""
    app = engine(app_url)
    try:
        with psycopg.connect(render(app_url.set(drivername="postgresql"))) as conn:
            return role_check_cost(conn, app, subject.user_id, iterations)
    finally:
        app.dispose()
