"""Transactions per second with N client threads, scoped vs hand-filtered, in turns."""

import threading
import time
from collections.abc import Callable
from itertools import count

Request = Callable[[int], object]


def _rate(request: Request, threads: int, seconds: float) -> float:
    """Completed requests per second while threads clients loop on request for seconds."""
    deadline = time.perf_counter() + seconds
    done = [0] * threads
    numbers = count()  # shared, so the clients spread over the subjects

    def client(slot: int) -> None:
        while time.perf_counter() < deadline:
            request(next(numbers))
            done[slot] += 1

    workers = [threading.Thread(target=client, args=(slot,)) for slot in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)


def throughput(requests: list[Request], threads: int, seconds: float, rounds: int) -> list[float]:
    """The mean rate of each request, measured in short turns of seconds each, in rotation.

    Turns rather than all at once: each gets the whole machine while it runs. The order
    rotates every round (a b c, b c a, ...) so a drift in the load of other processes hits all.
    """
    for request in requests:  # warm-up: connections, prepared statements
        _rate(request, threads, seconds / 2)
    rates: list[list[float]] = [[] for _ in requests]
    for round_ in range(rounds):
        for k in range(len(requests)):
            slot = (round_ + k) % len(requests)
            rates[slot].append(_rate(requests[slot], threads, seconds))
    return [sum(measured) / rounds for measured in rates]
