"""The pytest plugin (todo_rls.testing) with --rls-citus: its databases are made on every node
of the cluster, its isolation matrix runs against the distributed tables, and a weakened
policy on a distributed table fails it."""

import os

import pytest

from todo_rls.testing.citus import DATABASE_PREFIX, CitusCluster
from todo_rls.testing.database import LOGIN_ROLE_PREFIX, TABLESPACE_ENV

import orphans
import ram_tablespace

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.citus

# A downstream project's tests: the plugin's fixtures, nothing of todo-rls's own suite.
INNER = """
import os
import uuid

import pytest


# One database per test, and each costs seconds on Citus (made on every node, migrated):
# the distribution and a scoped session are checked in one test.
def test_the_database_is_distributed_and_a_session_sees_its_own_rows(
    rls_admin, rls_citus_cluster, rls_create_user, rls_session_as
):
    from sqlalchemy import text
    from todo_rls import tasks

    assert rls_citus_cluster is not None
    # In the run's tablespace, on every node (the suite's RAM disk, when it has one).
    expected = os.environ.get("TODO_RLS_TEST_TABLESPACE") or "pg_default"
    placed = (
        "select t.spcname::text from pg_catalog.pg_database d join pg_catalog.pg_tablespace t"
        " on t.oid = d.dattablespace where d.datname = pg_catalog.current_database()"
    )
    assert rls_admin.execute(placed).fetchone() == (expected,)
    on_workers = rls_admin.execute(
        "select result from run_command_on_workers(%s)", (placed,)
    ).fetchall()
    assert on_workers == [(expected,)] * 2, on_workers
    kinds = dict(rls_admin.execute(
        "select logicalrelid::text, partmethod from pg_dist_partition"
    ).fetchall())
    for table in ("task", "conversation", "message", "user_preference", "audit_event"):
        assert kinds[table] == "h", kinds
    assert kinds['"user"'] == "n" and kinds["todo_rls.signing_key"] == "n", kinds

    alice, bob = rls_create_user(), rls_create_user()
    with rls_session_as(alice) as session:
        tasks.create(session, "alice's")
        session.commit()
    with rls_session_as(alice) as session:
        assert session.connection().execute(text("select count(*) from task")).scalar_one() == 1
    with rls_session_as(bob) as session:
        assert session.connection().execute(text("select count(*) from task")).scalar_one() == 0


VERIFIED = "user_id = todo_rls.current_user_id()"
WEAKENINGS = {
    "task_select": "alter policy task_select on task using ({})",
    # `delete from task`, with no WHERE, reaches the row through the delete policy alone.
    "task_delete": "alter policy task_delete on task using ({})",
}


# One database for the four tables and the weakenings: each test database is made on every
# node (seconds each).
def test_owned_tables_are_isolated_and_a_weakened_policy_is_caught(
    rls_admin, rls_assert_owner_isolated
):
    for table, row in [
        ("task", {"title": "a task"}),
        ("conversation", {"title": "a chat"}),
        ("user_preference", {"theme": "dark"}),
    ]:
        rls_assert_owner_isolated(table, row)

    def message_of(owner):
        conversation = uuid.uuid4()
        rls_admin.execute(
            "insert into conversation (id, user_id, title) values (%s, %s, 'chat')",
            (conversation, owner),
        )
        return {"conversation_id": conversation, "role": "user", "content": "hi"}

    rls_assert_owner_isolated("message", message_of)

    # A weakened policy on a distributed table is caught; restored, task is isolated again
    # (the positive control of the next weakening; the first's is task's check above).
    for policy, alter in WEAKENINGS.items():
        rls_admin.execute(alter.format("true"))  # on the coordinator: reaches every shard
        with pytest.raises(AssertionError, match="task is not owner-isolated"):
            rls_assert_owner_isolated("task", {"title": "a task"})
        rls_admin.execute(alter.format(VERIFIED))
        rls_assert_owner_isolated("task", {"title": "a task"})
"""


def test_the_plugin_runs_its_matrix_on_a_citus_cluster(
    pytester: pytest.Pytester, citus_cluster: CitusCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cluster's tablespace (one of that name on every node), not the system server's.
    if citus_cluster.coordinator.tablespace is None:
        monkeypatch.delenv(TABLESPACE_ENV, raising=False)
    else:
        monkeypatch.setenv(TABLESPACE_ENV, citus_cluster.coordinator.tablespace)
    pytester.makepyfile(test_inner=INNER)
    url = citus_cluster.coordinator.url("postgres").render_as_string(hide_password=False)
    before = databases(citus_cluster)
    # In this process (no interpreter start): the plugin's names carry this process's pid.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_inprocess(
        "-p", "todo_rls.testing", "--rls-server-url", url, "--rls-citus", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)
    # Every database and role the plugin made was dropped, on every node. (Other runs may
    # make theirs meanwhile: what is new and named after this process, or after a process
    # that ended, is a leak.)
    left = [
        {name for name in now - then if pid_of(name) == os.getpid() or not alive(name)}
        for now, then in zip(databases(citus_cluster), before, strict=True)
    ]
    assert left == [set()] * len(citus_cluster.nodes)


def test_a_tablespace_missing_on_a_worker_stops_the_run_naming_the_node(
    pytester: pytest.Pytester, citus_cluster: CitusCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = ram_tablespace.make(citus_cluster.coordinator)  # on the coordinator alone
    if made is None:
        pytest.skip("no RAM-disk tablespace on this cluster (tests/ram_tablespace.py)")
    try:
        monkeypatch.setenv(TABLESPACE_ENV, made.name)
        pytester.makepyfile(test_inner="def test_never_runs(rls_database):\n    pass\n")
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        url = citus_cluster.coordinator.url("postgres").render_as_string(hide_password=False)
        result = pytester.runpytest_inprocess(
            "-p", "todo_rls.testing", "--rls-server-url", url, "--rls-citus"
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        workers = ", ".join(f"{host}:{port}" for host, port in citus_cluster.workers)
        result.stdout.fnmatch_lines(
            [f"*--rls-citus: node {workers} has no tablespace '{made.name}'*create it on each*"]
        )
    finally:
        assert ram_tablespace.drop(citus_cluster.coordinator, made) == []


def pid_of(name: str) -> int:
    """The process id a database or role name carries (<prefix>_<pid>_<hex>)."""
    return int(name.rsplit("_", 2)[1])


def alive(name: str) -> bool:
    """Whether the process a database or role name carries runs."""
    return orphans.process_exists(pid_of(name))


def databases(cluster: CitusCluster) -> list[set[str]]:
    """The names of the Citus test databases and of the plugin's login roles, on each node."""
    found = cluster.on_every_node(
        "postgres",
        "select datname from pg_database where datname like %s"
        " union all select rolname from pg_roles where rolname like %s",
        f"{DATABASE_PREFIX}_%",
        f"{LOGIN_ROLE_PREFIX}_%",
    )
    return [{name for (name,) in rows} for rows in found]
