"""Fixtures live in topic modules: the server, the migrated database, the users and engines."""

import gc
import os

import pytest
from hypothesis import settings

pytest_plugins = ["fix_server", "fix_db", "fix_rolled", "fix_pgbouncer", "fix_citus"]

# Hypothesis: CI walks more and the same walks every run (a red build is reproducible, never a
# lucky draw), with nothing saved from or replayed out of an earlier run; a developer's run is
# smaller. HYPOTHESIS_PROFILE picks one by name.
settings.register_profile(
    "ci", max_examples=20, stateful_step_count=30, derandomize=True, database=None
)
settings.register_profile("dev", max_examples=8, stateful_step_count=20)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() in ("true", "1", "yes") else "dev")
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fewer garbage collections in the test processes: the imported modules (SQLAlchemy,
    Hypothesis, Alembic) are frozen out of every collection, and the youngest generation is
    collected after 20,000 allocations instead of 700. Under `perf record` the fast tier's
    workers spent 4.4% of all CPU in the collector without this and 2.6% with it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
