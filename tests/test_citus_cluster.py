"""Dropping a Citus test database on a real cluster: CitusCluster.drop_database when a killed
run left it on some nodes only, and the suite's RAM tablespaces when a run left a database in
them on every node (the workers refuse ALTER DATABASE), and a login role a killed run left on
every node."""

import dataclasses
import secrets
import shutil

import pytest
from psycopg import sql

from todo_rls.testing.citus import CitusCluster, new_database_name

import orphans
import ram_tablespace
from fix_citus import ram_tablespaces_on_every_node

pytestmark = pytest.mark.citus


def on_nodes(cluster: CitusCluster, name: str) -> list[bool]:
    """Whether each node (coordinator first) has database name."""
    found = cluster.on_every_node(
        "postgres", "select 1 from pg_catalog.pg_database where datname = %s", name
    )
    return [bool(rows) for rows in found]


def test_a_database_a_killed_run_left_on_some_nodes_only_is_dropped_on_those(
    citus_cluster: CitusCluster,
) -> None:
    name = new_database_name()
    citus_cluster.create_plain_database(name)
    with citus_cluster.nodes[2].connect("postgres", autocommit=True) as conn:
        conn.execute(f'drop database "{name}" with (force)')
    assert on_nodes(citus_cluster, name) == [True, True, False]

    citus_cluster.drop_database(name)
    assert on_nodes(citus_cluster, name) == [False, False, False]


# A database Citus still lists as distributed, on a node, though the node has no such database.
STALE_DISTRIBUTED_DATABASES = """
select count(*)::int from pg_catalog.pg_dist_object o
where o.classid = 'pg_catalog.pg_database'::regclass
  and not exists (select from pg_catalog.pg_database d where d.oid = o.objid)
"""


def test_a_dropped_database_leaves_no_row_in_citus_metadata_on_any_node(
    citus_cluster: CitusCluster,
) -> None:
    name = new_database_name()
    before = citus_cluster.on_every_node("postgres", STALE_DISTRIBUTED_DATABASES)
    citus_cluster.create_database(name)  # propagated: each node lists it as distributed
    listed = citus_cluster.on_every_node(
        "postgres",
        "select count(*)::int from pg_catalog.pg_dist_object o"
        " join pg_catalog.pg_database d on d.oid = o.objid where d.datname = %s",
        name,
    )
    assert listed == [[(1,)]] * 3  # control

    citus_cluster.drop_database(name)
    assert on_nodes(citus_cluster, name) == [False, False, False]
    assert citus_cluster.on_every_node("postgres", STALE_DISTRIBUTED_DATABASES) == before


def test_a_database_left_in_the_ram_tablespaces_is_named_and_dropped_on_every_node(
    citus_cluster: CitusCluster,
) -> None:
    # Seen in a run: the cleanup un-templated each database it found, and a worker refused
    # (ALTER DATABASE is the coordinator's), so the tablespaces and the copies stayed.
    made = ram_tablespaces_on_every_node(citus_cluster)
    if not made:
        pytest.skip("no RAM disk here for a tablespace on every node")
    coordinator = dataclasses.replace(citus_cluster.coordinator, tablespace=made[0][1].name)
    cluster = dataclasses.replace(citus_cluster, coordinator=coordinator)
    name = new_database_name()
    try:
        cluster.create_plain_database(name)
        assert on_nodes(cluster, name) == [True, True, True]

        left = [ram_tablespace.drop(node, tablespace) for node, tablespace in made]
    finally:  # what a failure left, node by node
        for node, tablespace in made:
            with node.connect("postgres", autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
                conn.execute(f'drop tablespace if exists "{tablespace.name}"')
            shutil.rmtree(tablespace.location, ignore_errors=True)
    assert left == [[name]] * 3
    assert on_nodes(cluster, name) == [False, False, False]
    tablespaces = cluster.on_every_node(
        "postgres", "select 1 from pg_catalog.pg_tablespace where spcname = %s", made[0][1].name
    )
    assert tablespaces == [[], [], []]
    assert not any(tablespace.location.exists() for _, tablespace in made)


def test_a_login_role_a_killed_run_left_is_dropped_on_every_node(
    citus_cluster: CitusCluster,
) -> None:
    # As a run's login role, made through a coordinator database that is gone now: on each node.
    role = f"todo_rls_citus_app_{orphans.ended_process_id()}_abc12345"
    make = sql.SQL("create role {} login password {} valid until 'tomorrow'").format(
        sql.Identifier(role), sql.Literal(secrets.token_urlsafe(24))
    )
    exists = "select count(*)::int from pg_catalog.pg_roles where rolname = %s"
    try:
        for node in citus_cluster.nodes:
            with node.connect("postgres", autocommit=True) as conn:
                conn.execute("set citus.enable_ddl_propagation = off")
                conn.execute(make)
        assert citus_cluster.on_every_node("postgres", exists, role) == [[(1,)]] * 3

        for node in citus_cluster.nodes:
            assert role in orphans.drop_orphan_roles(node)
        assert citus_cluster.on_every_node("postgres", exists, role) == [[(0,)]] * 3
    finally:
        for node in citus_cluster.nodes:
            with node.connect("postgres", autocommit=True) as conn:
                conn.execute("set citus.enable_ddl_propagation = off")
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
