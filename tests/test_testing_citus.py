"""The plugin's Citus databases (todo_rls.testing._CitusDatabases), without a cluster: the
template's database serves the first test instead of being made twice, and every database
made is dropped exactly once."""

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from todo_rls.testing import _CitusDatabases
from todo_rls.testing.citus import CitusCluster


@dataclass
class FakeCluster:
    """Records what a CitusCluster would make and drop."""

    made: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def create_database(self, name: str) -> None:
        self.made.append(name)

    def drop_database(self, name: str) -> None:
        self.dropped.append(name)


def pool(cluster: FakeCluster, migrate: Callable[[str], None]) -> _CitusDatabases:
    fake: CitusCluster = cluster  # type: ignore[assignment]  # the two methods the pool calls
    return _CitusDatabases(fake, migrate)


def test_the_first_test_takes_the_templates_database_and_the_next_gets_a_new_one() -> None:
    cluster, migrated = FakeCluster(), list[str]()
    databases = pool(cluster, migrated.append)
    with databases.template() as template:
        with databases.database() as first:
            assert first == template
        with databases.database() as second:
            assert second != template
        assert cluster.dropped == [first, second]
    assert cluster.made == migrated == [template, second]
    assert cluster.dropped == [first, second]  # the template's was dropped once, by its test


def test_an_untaken_spare_is_dropped_with_the_template() -> None:
    cluster, migrated = FakeCluster(), list[str]()
    databases = pool(cluster, migrated.append)
    with databases.template() as template:
        pass
    assert cluster.made == migrated == [template]
    assert cluster.dropped == [template]


def test_a_database_whose_migration_fails_is_dropped() -> None:
    cluster = FakeCluster()

    def broken(name: str) -> None:
        raise RuntimeError(f"migration of {name} failed")

    databases = pool(cluster, broken)
    with pytest.raises(RuntimeError, match="failed"), databases.template():
        pass
    assert cluster.dropped == cluster.made and len(cluster.made) == 1
