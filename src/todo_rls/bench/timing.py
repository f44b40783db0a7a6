"""Interleaved timing of two ways to do the same thing, and the figures reported from it."""

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# psycopg prepares a statement on its 5th use (one extra round trip, once): warm up past it.
WARM_UP = 8


@dataclass(frozen=True)
class Timing:
    """Median and 95th percentile of wall-clock durations, and the median of this process's
    CPU time over the same runs (the client's own work: Python, SQLAlchemy, psycopg), in ms."""

    median_ms: float
    p95_ms: float
    cpu_median_ms: float

    @classmethod
    def of(cls, seconds: list[float], cpu_seconds: list[float]) -> "Timing":
        ordered = sorted(seconds)
        p95 = ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]
        return cls(
            statistics.median(ordered) * 1000, p95 * 1000, statistics.median(cpu_seconds) * 1000
        )


def _timed(action: Callable[[int], object], i: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of action(i); nothing else runs in the process."""
    started, cpu = time.perf_counter(), time.process_time()
    action(i)
    return time.perf_counter() - started, time.process_time() - cpu


def interleaved(actions: list[Callable[[int], object]], iterations: int) -> list[Timing]:
    """Time each action(i) in turn, after a warm-up of all; one Timing per action.

    The order rotates every iteration (a b c, b c a, c a b, ...), so no action always runs on
    the caches another just warmed, and noise from other processes hits all alike.
    """
    for i in range(WARM_UP):
        for action in actions:
            action(i)
    times: list[list[float]] = [[] for _ in actions]
    cpu: list[list[float]] = [[] for _ in actions]
    for i in range(iterations):
        for k in range(len(actions)):
            slot = (i + k) % len(actions)
            wall, used = _timed(actions[slot], i)
            times[slot].append(wall)
            cpu[slot].append(used)
    return [Timing.of(durations, used) for durations, used in zip(times, cpu, strict=True)]


def ratio(a: float, b: float) -> float:
    """a / b, rounded for reports (b is a positive duration or rate)."""
    return round(a / b, 3) if b else math.inf
