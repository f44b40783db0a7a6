"""Each measurement of a bench run, over the sides of sides.py."""

import sys
from typing import Any

from sqlalchemy import URL

from todo_rls.bench.patterns import PATTERNS, explicit_session
from todo_rls.bench.plans import index_scans_only, plan_of, verifier_at
from todo_rls.bench.proxy import DelayProxy
from todo_rls.bench.roundtrips import round_trips
from todo_rls.bench.sides import (
    BARE,
    PLAIN,
    PLAIN_UNPREPARED,
    SCOPED,
    SCOPED_UNPREPARED,
    SET_CONFIG,
    Side,
    Targets,
    engines,
    request,
)
from todo_rls.bench.subjects import Subject
from todo_rls.bench.throughput import throughput
from todo_rls.bench.timing import WARM_UP, interleaved, ratio
from todo_rls.identity import SigningKey
from todo_rls.session import scoped_session

# The request the round-trip, latency and throughput figures are about: the app's most common.
REQUEST = PATTERNS[0]
# Scoped against plain, prepared statements on and off: what the round trips, latency and
# throughput compare.
PAIRS = ((SCOPED, PLAIN), (SCOPED_UNPREPARED, PLAIN_UNPREPARED))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ratios(median: dict[str, float]) -> dict[str, float]:
    """The comparisons the report makes, of whichever sides were measured."""
    pairs = {
        "scoped/plain": ("scoped", "plain"),
        "scoped/plain unprepared": ("scoped_unprepared", "plain_unprepared"),
        "set_config/plain": ("set_config", "plain"),
        "scoped/set_config": ("scoped", "set_config"),
        "scoped unprepared/prepared": ("scoped_unprepared", "scoped"),
        "plain unprepared/prepared": ("plain_unprepared", "plain"),
        "bare/initplan": ("bare", "scoped"),
        "bare/initplan unprepared": ("bare_unprepared", "scoped_unprepared"),
    }
    return {
        name: ratio(median[a], median[b])
        for name, (a, b) in pairs.items()
        if a in median and b in median
    }


def measure_patterns(
    targets: Targets,
    key: SigningKey,
    subjects: list[Subject],
    iterations: int,
    sides: tuple[Side, ...],
) -> list[dict[str, Any]]:
    """Median, p95 and client CPU of every pattern on every side, interleaved; ratios; plans."""
    results = []
    with engines(targets, sides, key) as by_side:
        for pattern in PATTERNS:
            _say(f"measuring {pattern.name} ...")
            actions = [request(side, by_side[side], key, pattern, subjects) for side in sides]
            timings = dict(zip(sides, interleaved(actions, iterations), strict=True))
            median = {side.name: round(t.median_ms, 4) for side, t in timings.items()}
            # Plans for a typical user (the median of the subjects) and for the heaviest one,
            # whose share of a table may make a sequential scan the planner's right choice.
            typical, heaviest = subjects[len(subjects) // 2], subjects[0]
            app, plain = by_side[SCOPED], by_side[PLAIN]
            plan_rls = plan_of(scoped_session(app, typical.user_id), pattern, typical)
            plan_explicit = plan_of(explicit_session(plain, typical.user_id), pattern, typical)
            plan_heaviest = plan_of(scoped_session(app, heaviest.user_id), pattern, heaviest)
            result: dict[str, Any] = {
                "name": pattern.name,
                "median_ms": median,
                "p95_ms": {side.name: round(t.p95_ms, 4) for side, t in timings.items()},
                "client_cpu_ms": {
                    side.name: round(t.cpu_median_ms, 4) for side, t in timings.items()
                },
                "ratios": _ratios(median),
                "plan_rls": plan_rls,
                "plan_explicit": plan_explicit,
                "plan_heaviest_user_rls": plan_heaviest,
                "heaviest_user_tasks": heaviest.tasks,
                "index_scans_only": index_scans_only(plan_rls) and index_scans_only(plan_explicit),
                "verifier_at": verifier_at(scoped_session(app, typical.user_id), pattern, typical),
            }
            if BARE in by_side:
                bare = scoped_session(by_side[BARE], typical.user_id)
                result["verifier_at_bare_form"] = verifier_at(bare, pattern, typical)
            results.append(result)
    return results


def measure_round_trips(targets: Targets, key: SigningKey, subject: Subject) -> dict[str, int]:
    """Round trips of one warmed-up REQUEST transaction on each side of PAIRS."""
    sides = tuple(side for pair in PAIRS for side in pair)
    counts: dict[str, int] = {}
    with engines(targets, sides, key) as by_side:
        for side, engine in by_side.items():
            transaction = request(side, engine, key, REQUEST, [subject])
            for i in range(WARM_UP):
                transaction(i)
            counts[side.name] = round_trips(engine, lambda: transaction(0))  # noqa: B023
    extra = {
        f"extra{scoped.name.removeprefix('scoped')}": counts[scoped.name] - counts[plain.name]
        for scoped, plain in PAIRS
    }
    return counts | extra


def _upstream(url: URL) -> str | tuple[str, int]:
    host = str(url.query.get("host") or url.host or "localhost")
    port = url.port or 5432
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _through(url: URL, port: int) -> URL:
    return url.difference_update_query(["host"]).set(host="127.0.0.1", port=port)


def measure_latency(
    targets: Targets, key: SigningKey, subjects: list[Subject], rtt_ms: float, iterations: int
) -> dict[str, Any]:
    """REQUEST's median latency through the delay proxy, every side of PAIRS and set_config."""
    sides = (SCOPED, PLAIN, SCOPED_UNPREPARED, PLAIN_UNPREPARED, SET_CONFIG)
    with DelayProxy(_upstream(targets.app_url), rtt_ms) as proxy:
        proxied = Targets(
            _through(targets.app_url, proxy.port), _through(targets.bypass_url, proxy.port)
        )
        with engines(proxied, sides, key) as by_side:
            actions = [request(side, by_side[side], key, REQUEST, subjects) for side in sides]
            timings = interleaved(actions, iterations)
    median = {side.name: round(t.median_ms, 3) for side, t in zip(sides, timings, strict=True)}
    return {"rtt_ms": rtt_ms, "median_ms": median, "ratios": _ratios(median)}


def measure_throughput(
    targets: Targets,
    key: SigningKey,
    subjects: list[Subject],
    threads: int,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """REQUEST transactions per second with `threads` clients, every side of PAIRS."""
    sides = tuple(side for pair in PAIRS for side in pair)
    with engines(targets, sides, key, threads) as by_side:
        requests = [request(side, by_side[side], key, REQUEST, subjects) for side in sides]
        rates = throughput(requests, threads, seconds, rounds)
    tps = {side.name: round(rate, 1) for side, rate in zip(sides, rates, strict=True)}
    return {
        "threads": threads,
        "seconds_per_turn": seconds,
        "turns_per_side": rounds,
        "tps": tps,
        "ratios": _ratios(tps),
    }
