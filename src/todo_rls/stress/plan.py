"""What a stress run is asked to do (StressPlan) and what it did and found (StressResult)."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from todo_rls.errors import InvalidInputError


@dataclass(frozen=True)
class StressPlan:
    """How much work to run: users are shared round-robin by threads + tasks workers."""

    users: Sequence[str]
    threads: int = 16
    tasks: int = 64
    transactions: int = 10_000
    unscoped_every: int = 10
    pool_size: int = 8  # per engine; behind PgBouncer it is client connections, not servers

    def __post_init__(self) -> None:
        if not self.users:
            raise InvalidInputError("a stress run needs at least one user id")
        if self.threads < 0 or self.tasks < 0 or self.threads + self.tasks == 0:
            raise InvalidInputError("threads and tasks must be >= 0 and not both 0")
        if self.transactions < 1 or self.unscoped_every < 1 or self.pool_size < 1:
            raise InvalidInputError("transactions, unscoped_every and pool_size must be >= 1")

    def share(self, worker: int) -> int:
        """Scoped transactions of worker: the total split evenly, remainder to the first."""
        workers = self.threads + self.tasks
        return self.transactions // workers + (worker < self.transactions % workers)


@dataclass
class StressResult:
    """What a run did and found; leaks must be 0, errors counts exceptions raised."""

    transactions: int = 0  # scoped transactions committed and checked
    unscoped: int = 0  # unscoped transactions checked
    users: int = 0
    threads: int = 0
    tasks: int = 0
    leaks: int = 0
    errors: int = 0
    elapsed: float = 0.0
    backends: int = 0  # distinct server backends (pg_backend_pid) that served the run
    shared_backends: int = 0  # backends that served more than one user
    samples: list[str] = field(default_factory=list)  # first leaks and errors, for the report

    def summary(self) -> str:
        """One line of counts, for test output and the command."""
        return (
            f"{self.transactions} scoped + {self.unscoped} unscoped transactions, "
            f"{self.users} users, {self.threads} threads, {self.tasks} asyncio tasks, "
            f"{self.backends} backends ({self.shared_backends} served >1 user), "
            f"leaks={self.leaks}, errors={self.errors}, {self.elapsed:.1f} s"
        )
