"""The bench's data sizes: users, tasks, conversations and messages per --scale name."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """How much data one bench database holds; tasks per user are skewed (see data.py)."""

    name: str
    users: int
    tasks: int
    conversations: int
    messages: int
    # Timed runs per pattern and side, after the warm-up.
    iterations: int


SCALES = {
    scale.name: scale
    for scale in (
        Scale("tiny", users=100, tasks=5_000, conversations=1_000, messages=5_000, iterations=10),
        Scale("100k", 1_000, 100_000, 10_000, 50_000, iterations=200),
        Scale("1m", 10_000, 1_000_000, 100_000, 500_000, iterations=200),
        Scale("10m", 100_000, 10_000_000, 1_000_000, 5_000_000, iterations=200),
    )
}
DEFAULT_SCALE = "1m"
