"""The tally a stress run's workers share: every observed transaction checked for a leak."""

import threading
from typing import Any

from todo_rls.stress.plan import StressResult

_MAX_SAMPLES = 10


class Recorder:
    """Thread-safe tally shared by every worker of one run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result = StressResult()
        self.served: dict[int, set[str]] = {}

    def scoped(self, user_id: str, row: Any, new_id: object) -> None:
        problems = []
        if row.guc != user_id:
            problems.append(f"app.user_id was {row.guc!r}")
        if not row.sees_new_row:
            problems.append(f"its own new task {new_id} was invisible")
        foreign = sorted(set(row.owners) - {user_id})
        if foreign:
            problems.append(f"saw tasks of {foreign}")
        with self.lock:
            self.result.transactions += 1
            self.served.setdefault(int(row.pid), set()).add(user_id)
            if problems:
                self._leak(f"user {user_id} on backend {row.pid}: " + "; ".join(problems))

    def unscoped(self, row: Any) -> None:
        with self.lock:
            self.result.unscoped += 1
            self.served.setdefault(int(row.pid), set()).add("")
            if row.guc not in (None, "") or row.owners:
                self._leak(
                    f"unscoped transaction on backend {row.pid}: app.user_id {row.guc!r}, "
                    f"saw tasks of {sorted(row.owners)}"
                )

    def error(self, error: BaseException) -> None:
        with self.lock:
            self.result.errors += 1
            self._sample(f"error: {type(error).__name__}: {' '.join(str(error).split())[:300]}")

    def _leak(self, message: str) -> None:
        self.result.leaks += 1
        self._sample(f"leak: {message}")

    def _sample(self, message: str) -> None:
        if len(self.result.samples) < _MAX_SAMPLES:
            self.result.samples.append(message)
