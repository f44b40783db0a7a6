"""`todo-rls bench-citus` runs end to end on the cluster and the single node, and leaves
nothing behind (a smoke test: the figures themselves are docs/citus.md's)."""

import argparse
import os

import pytest

from todo_rls.bench import citus as bench_citus
from todo_rls.testing.citus import CitusCluster

from fix_server import PgServer

pytestmark = pytest.mark.citus


def test_bench_citus_measures_every_pattern_on_both_sides(
    citus_cluster: CitusCluster, pg_server: PgServer
) -> None:
    args = argparse.Namespace(
        citus_url=citus_cluster.coordinator.url("postgres").render_as_string(hide_password=False),
        single_url=pg_server.url("postgres").render_as_string(hide_password=False),
        users=4,
        tasks=3,
        iterations=3,
        shard_count=4,
        json=False,
        allow_remote_server=False,
    )
    rows = bench_citus.measure(args)
    assert [row.pattern for row in rows] == list(bench_citus.PATTERNS)
    assert all(
        min(row.single_median_ms, row.citus_median_ms, row.bare_median_ms) > 0 for row in rows
    )
    assert "fan-out" in bench_citus.render(rows, args)
    # Its databases and its login role (named after this process) are gone, on every node and
    # on the single server; this module made nothing else.
    pid = f"_{os.getpid()}_"
    for rows_of_node in citus_cluster.on_every_node(
        "postgres",
        "select datname from pg_database where position(%s in datname) > 0"
        " union all select rolname from pg_roles where position(%s in rolname) > 0",
        pid,
        pid,
    ):
        assert rows_of_node == []
    with pg_server.connect("postgres", autocommit=True) as conn:
        left = conn.execute(
            "select datname from pg_database where datname like %s",
            (f"todo_rls_bench_citus{pid}%",),
        ).fetchall()
        assert left == []
