"""Where a verifier's keys can live on Citus, and how DDL reaches the workers.

The identity work's verifier runs inside the policies, so on Citus it runs on the workers,
inside the shard queries, and reads its keys there. Facts for it (docs/citus.md,
/work/coord/citus-facts.md): a node-local table works, a reference table is refused unless
nested execution is allowed, an IMMUTABLE key-ring function is folded into the workers'
cached plans, and which objects the coordinator's DDL creates on the workers.
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.testing.citus import CitusCluster

from citus_probe import TASKS_EACH
from fix_citus import Probe

pytestmark = pytest.mark.citus

KEYRING_SQL = r"""
create table keyring.reference_key (k text primary key);
select pg_catalog.create_reference_table('keyring.reference_key');
insert into keyring.reference_key values ('k1');
-- IMMUTABLE and argument-free: the planner folds a call into a constant, at plan time.
create function keyring.node_key() returns text
  language sql immutable as $$ select k from keyring.node_key $$;
create function keyring.reference_key() returns text
  language sql immutable as $$ select k from keyring.reference_key $$;
create function probe.verify_folded() returns text
  language plpgsql stable security definer set search_path = ''
as $$
begin
  if keyring.node_key() = 'k1' then
    return nullif(pg_catalog.current_setting('app.user_id', true), '');
  end if;
  return null;
end
$$;
create function probe.verify_each_call() returns text
  language plpgsql stable security definer set search_path = ''
as $$
declare
  key text;
begin
  select k into key from keyring.node_key;
  if key = 'k1' then
    return nullif(pg_catalog.current_setting('app.user_id', true), '');
  end if;
  return null;
end
$$;
create function probe.verify_reference() returns text
  language plpgsql stable security definer set search_path = ''
as $$
declare
  key text;
begin
  select k into key from keyring.reference_key;
  if key = 'k1' then
    return nullif(pg_catalog.current_setting('app.user_id', true), '');
  end if;
  return null;
end
$$;
create function probe.verify_reference_nested() returns text
  language plpgsql stable security definer
  set search_path = '' set citus.allow_nested_distributed_execution = on
as $$
declare
  key text;
begin
  select k into key from keyring.reference_key;
  if key = 'k1' then
    return nullif(pg_catalog.current_setting('app.user_id', true), '');
  end if;
  return null;
end
$$;
create function probe.verify_reference_folded() returns text
  language plpgsql stable security definer
  set search_path = '' set citus.allow_nested_distributed_execution = on
as $$
begin
  if keyring.reference_key() = 'k1' then
    return nullif(pg_catalog.current_setting('app.user_id', true), '');
  end if;
  return null;
end
$$;
"""
# A table in the same database on every node, made node by node: Citus propagates no table.
NODE_KEY_TABLE = "create table keyring.node_key (k text not null)"


@pytest.fixture(scope="module")
def keyring(citus_probe: Probe) -> Probe:
    """The probe database with the key tables and verifiers above."""
    with citus_probe.app.admin() as conn:
        conn.execute("create schema keyring")  # propagated: a schema is a distributed object
        for query in (NODE_KEY_TABLE, "insert into keyring.node_key values ('k1')"):
            results = conn.execute(
                "select success, result from pg_catalog.run_command_on_all_nodes(%s)", (query,)
            ).fetchall()
            assert all(success for success, _ in results), results
        conn.execute(KEYRING_SQL)
    return citus_probe


def set_node_key(probe: Probe, key: str) -> None:
    """The key in keyring.node_key on every node."""
    with probe.app.admin() as conn:
        command = sql.SQL("update keyring.node_key set k = {}").format(sql.Literal(key))
        results = conn.execute(
            "select success from pg_catalog.run_command_on_all_nodes(%s)",
            (command.as_string(conn),),
        ).fetchall()
        assert results == [(True,)] * len(results)


@pytest.fixture
def policy_calls(keyring: Probe) -> Iterator[Any]:
    """Point task_select at a verifier (e.g. "probe.verify_folded()"); restored after."""
    admin = keyring.app.admin()

    def use(verifier: str) -> None:
        admin.execute(
            sql.SQL("alter policy task_select on public.task using (user_id = {}())").format(
                sql.SQL(verifier)
            )
        )

    yield use
    use("probe.current_user_id")
    set_node_key(keyring, "k1")
    admin.close()


def scoped_count(conn: psycopg.Connection[Any], probe: Probe, routed: bool = True) -> Any:
    """alice's visible task count in a new scoped transaction (committed)."""
    with conn.transaction():
        conn.execute("select probe.scope(%s)", (probe.alice,))
        if routed:
            return conn.execute(
                "select count(*) from task where user_id = %s", (probe.alice,)
            ).fetchone()
        return conn.execute("select count(*) from task").fetchone()


@pytest.mark.parametrize("routed", [True, False], ids=["routed", "fan-out"])
def test_verifier_reads_a_node_local_table_on_the_workers(
    keyring: Probe, policy_calls: Any, routed: bool
) -> None:
    policy_calls("probe.verify_each_call")
    with keyring.app.connect() as conn:
        assert scoped_count(conn, keyring, routed) == (TASKS_EACH,)
        set_node_key(keyring, "not the key")
        assert scoped_count(conn, keyring, routed) == (0,)  # read on each call, on the workers


def test_verifier_reading_a_reference_table_is_refused_on_the_shards(
    keyring: Probe, policy_calls: Any
) -> None:
    policy_calls("probe.verify_reference")
    with keyring.app.connect() as conn:
        with pytest.raises(psycopg.errors.InternalError_, match="from a query on a shard"):
            scoped_count(conn, keyring)
        # Allowed per function, it works: the reference table has a placement on every node.
        policy_calls("probe.verify_reference_nested")
        assert scoped_count(conn, keyring) == (TASKS_EACH,)


@pytest.mark.parametrize(
    ("verifier", "key_ring"),
    [
        ("probe.verify_folded", "keyring.node_key"),
        ("probe.verify_reference_folded", "keyring.reference_key"),
    ],
    ids=["node-local table", "reference table"],
)
def test_immutable_key_ring_is_folded_into_the_workers_cached_plan(
    keyring: Probe, policy_calls: Any, verifier: str, key_ring: str
) -> None:
    policy_calls(verifier)
    replace = sql.SQL(
        "create or replace function {}() returns text language sql immutable"
        " as $$ select k from {} $$"
    ).format(sql.SQL(key_ring), sql.SQL(key_ring))
    with keyring.app.connect() as conn, keyring.app.admin() as admin:
        assert scoped_count(conn, keyring) == (TASKS_EACH,)
        if key_ring == "keyring.node_key":
            set_node_key(keyring, "rotated")
        else:
            admin.execute("update keyring.reference_key set k = 'rotated'")
        # The worker's backend planned the verifier's IF once, with the key ring's result as a
        # constant: the old key still passes on this session's cached worker connection.
        assert scoped_count(conn, keyring) == (TASKS_EACH,)
        with keyring.app.connect() as fresh:  # new worker backends plan afresh
            assert scoped_count(fresh, keyring) == (0,)
        # Replacing the key-ring function (propagated to the workers) drops the cached plans.
        admin.execute(replace)
        assert scoped_count(conn, keyring) == (0,)
        if key_ring == "keyring.reference_key":
            admin.execute("update keyring.reference_key set k = 'k1'")
            admin.execute(replace)


def objects_on(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """The schema's functions (with owner, ACL and settings) and the role e_role, on a node."""
    functions = conn.execute(
        "select p.oid::regprocedure::text, pg_catalog.pg_get_userbyid(p.proowner)::text,"
        " p.proacl::text, p.proconfig from pg_catalog.pg_proc p"
        " where p.pronamespace = pg_catalog.to_regnamespace(%s) order by 1",
        (schema,),
    ).fetchall()
    return {
        "schema": conn.execute("select pg_catalog.to_regnamespace(%s)::text", (schema,)).fetchone(),
        "functions": functions,
    }


def test_ddl_on_the_coordinator_reaches_every_node(citus_probe: Probe) -> None:
    # In the run's probe database (a new Citus database costs seconds): schema e_s and the role
    # are dropped at the end, on every node.
    citus_cluster, dbname = citus_probe.app.cluster, citus_probe.app.dbname
    role = "todo_rls_citus_e_role"
    with citus_cluster.coordinator.connect(dbname, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("create schema e_s")
            conn.execute(f"create role {role} nologin")
            conn.execute(
                "create function e_s.f() returns text language plpgsql stable security"
                " definer set search_path = '' as $$ begin return 'v1'; end $$"
            )
            conn.execute("revoke all on function e_s.f() from public")
            conn.execute(f"grant execute on function e_s.f() to {role}")
            conn.execute(f"grant usage on schema e_s to {role}")
            # Created before create_distributed_table, in the same transaction.
            conn.execute("create table e_s.t (user_id text primary key)")
            conn.execute("alter table e_s.t enable row level security")
            conn.execute("create policy t_select on e_s.t using (user_id = e_s.f())")
            conn.execute("select pg_catalog.create_distributed_table('e_s.t', 'user_id')")
        conn.execute(f"alter function e_s.f() owner to {role}")
        conn.execute("alter function e_s.f() set work_mem = '5MB'")
        try:
            expected = objects_on(conn, "e_s")
            assert expected["functions"][0][1:] == (
                role,
                f"{{{role}=X/{role}}}",
                ['search_path=""', "work_mem=5MB"],
            )
            for worker in citus_cluster.nodes[1:]:
                with worker.connect(dbname, autocommit=True) as on_worker:
                    assert objects_on(on_worker, "e_s") == expected
                    assert (
                        on_worker.execute(
                            "select nspacl::text from pg_namespace where nspname = 'e_s'"
                        ).fetchone()
                        == conn.execute(
                            "select nspacl::text from pg_namespace where nspname = 'e_s'"
                        ).fetchone()
                    )
        finally:
            conn.execute("drop schema e_s cascade")
            conn.execute(f"drop role {role}")
    for worker in citus_cluster.nodes[1:]:
        with worker.connect(dbname, autocommit=True) as on_worker:
            assert on_worker.execute(
                "select count(*) from pg_roles where rolname = %s", (role,)
            ).fetchone() == (0,)


EXISTING_SQL = r"""
create schema e_s;
create role todo_rls_citus_e3_role nologin;
create role todo_rls_citus_e3_policy_only nologin;
create function e_s.policy_fn() returns text language plpgsql stable security definer
  set search_path = '' as $$ begin return 'v1'; end $$;
create function e_s.trigger_fn() returns trigger language plpgsql as $$ begin return new; end $$;
create function e_s.key_ring() returns text language sql immutable as $$ select 'k1' $$;
create table e_s.t (user_id text primary key);
alter table e_s.t enable row level security;
create policy t_select on e_s.t for select to todo_rls_citus_e3_role
  using (user_id = e_s.policy_fn());
create trigger t_touch before update on e_s.t for each row execute function e_s.trigger_fn();
grant select on e_s.t to todo_rls_citus_e3_role;
create table e_s.u (user_id text primary key);
alter table e_s.u enable row level security;
create policy u_select on e_s.u for select to todo_rls_citus_e3_policy_only using (true);
"""


def test_objects_made_before_citus_reach_the_workers_only_as_dependencies(
    citus_cluster: CitusCluster,
) -> None:
    roles = ("todo_rls_citus_e3_role", "todo_rls_citus_e3_policy_only")
    functions = "select proname::text from pg_proc where pronamespace = 'e_s'::regnamespace"
    role_count = "select count(*) from pg_roles where rolname = %s"
    distribute = "select pg_catalog.create_distributed_table(%s, 'user_id')"
    with citus_cluster.database(citus=False) as dbname:
        try:
            with citus_cluster.coordinator.connect(dbname, autocommit=True) as conn:
                conn.execute(EXISTING_SQL)
            citus_cluster.add_citus(dbname)
            worker = citus_cluster.nodes[1]
            with worker.connect(dbname, autocommit=True) as on_worker:
                # citus_add_node copied none of them, not even the roles.
                assert on_worker.execute("select to_regnamespace('e_s')").fetchone() == (None,)
                assert on_worker.execute(role_count, (roles[0],)).fetchone() == (0,)
            with (
                citus_cluster.coordinator.connect(dbname, autocommit=True) as conn,
                conn.transaction(),
            ):
                conn.execute("set local citus.enable_unsafe_triggers = on")
                conn.execute(distribute, ("e_s.t",))
            with worker.connect(dbname, autocommit=True) as on_worker:
                # The policy's and the trigger's functions and the granted role came with the
                # table; a function that only another function's body calls (a key ring) did not.
                assert {row[0] for row in on_worker.execute(functions)} == {
                    "policy_fn",
                    "trigger_fn",
                }
                assert on_worker.execute(role_count, (roles[0],)).fetchone() == (1,)
            # A role named only in a policy's TO (no grant) is not a dependency Citus follows.
            with (
                citus_cluster.coordinator.connect(dbname, autocommit=True) as conn,
                pytest.raises(psycopg.errors.UndefinedObject, match=roles[1]),
            ):
                conn.execute(distribute, ("e_s.u",))
        finally:
            with citus_cluster.coordinator.connect(dbname, autocommit=True) as conn:
                conn.execute("drop schema if exists e_s cascade")
                for role in roles:
                    conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
            for node in citus_cluster.nodes[1:]:  # roles the coordinator did not propagate
                with node.connect("postgres", autocommit=True) as on_node:
                    for role in roles:
                        on_node.execute(
                            sql.SQL("drop role if exists {}").format(sql.Identifier(role))
                        )


def test_sql_function_over_a_coordinator_only_table_fails_on_the_workers(
    citus_probe: Probe,
) -> None:
    app = citus_probe.app
    with app.admin() as conn:
        conn.execute("create schema e4")
        conn.execute("create table e4.signing_key (k text)")  # a table: never propagated
        conn.execute("insert into e4.signing_key values ('k1')")
        conn.execute(
            "create function e4.key_ring() returns text language sql immutable"
            " as $$ select k from e4.signing_key $$"
        )
        results = conn.execute(
            "select n.nodeport, r.success, r.result"
            " from pg_catalog.run_command_on_all_nodes('select e4.key_ring()') r"
            " join pg_catalog.pg_dist_node n using (nodeid) order by 1"
        ).fetchall()
        conn.execute("drop schema e4 cascade")  # the run's probe database: leave it as found
    coordinator, *workers = results
    assert coordinator[1:] == (True, "k1")
    # The function was created on the workers (bodies are not checked there) and fails there.
    assert workers and all(
        not ok and 'relation "e4.signing_key" does not exist' in result for _, ok, result in workers
    ), workers
