"""Probe functions in the shape of the identity work's, for the facts tests on the cluster.

The database they live in is fix_citus's ``citus_probe`` fixture.

Shapes only (no signature check): ``probe.current_user_id()`` is the verifier's (plpgsql,
STABLE, SECURITY DEFINER, fixed search_path, reads app.user_id), ``probe.scope(user_id)`` is
begin_scope's (SET LOCAL through EXECUTE format(%L), with citus.propagate_set_commands set
transaction-locally first). The task table's four policies call the verifier shape, as the
identity revision's Citus predicate will.
"""

from typing import Any

import psycopg
from psycopg import pq

from fix_db import new_user_id

PROBE_SQL = r"""
create schema probe;
grant usage on schema probe to todo_app;
create function probe.current_user_id() returns text
  language plpgsql stable security definer set search_path = ''
as $$
begin
  return nullif(pg_catalog.current_setting('app.user_id', true), '');
end
$$;
-- SET LOCAL, not set_config: Citus forwards only SET commands to the workers.
create function probe.scope(user_id text) returns text
  language plpgsql set search_path = ''
as $$
begin
  perform pg_catalog.set_config('citus.propagate_set_commands', 'local', true);
  execute pg_catalog.format('set local app.user_id = %L', user_id);
  return current_user;
end
$$;
create function probe.scope_without_propagation(user_id text) returns text
  language plpgsql set search_path = ''
as $$
begin
  execute pg_catalog.format('set local app.user_id = %L', user_id);
  return current_user;
end
$$;
create function probe.scope_after_reset_all(user_id text) returns text
  language plpgsql set search_path = ''
as $$
begin
  reset all;
  perform pg_catalog.set_config('citus.propagate_set_commands', 'local', true);
  execute pg_catalog.format('set local app.user_id = %L', user_id);
  return current_user;
end
$$;
alter policy task_select on public.task using (user_id = probe.current_user_id());
alter policy task_insert on public.task with check (user_id = probe.current_user_id());
alter policy task_update on public.task using (user_id = probe.current_user_id())
  with check (user_id = probe.current_user_id());
alter policy task_delete on public.task using (user_id = probe.current_user_id());
"""
# The audit trigger writes through audit_event's policies (the real verifier), which the probe
# contexts (unsigned) do not pass: not probed here. Its own message: Citus forwards DDL as the
# text of the whole message, which a worker refuses when it holds several commands.
DROP_AUDIT_TRIGGER = "drop trigger task_audit on public.task"
TASKS_EACH = 5
# Every shard's rows with the node that answered and the user it saw: run as the superuser,
# whom no policy binds, so each worker answers for itself.
SEEN_ON_NODES = """
select distinct pg_catalog.inet_server_port(), pg_catalog.current_setting('app.user_id', true)
from public.task
"""


def worker_port_of(conn: psycopg.Connection[Any], user_id: str) -> int:
    """The port of the worker that holds user_id's task shard."""
    row = conn.execute(
        "select n.nodeport from pg_catalog.pg_dist_placement p"
        " join pg_catalog.pg_dist_node n using (groupid)"
        " where p.shardid"
        " = pg_catalog.get_shard_id_for_distribution_column('public.task', %s::text)",
        (user_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def users_on_two_workers(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """Two new user ids whose rows land on different workers."""
    by_port: dict[int, str] = {}
    while len(by_port) < 2:
        user_id = new_user_id()
        by_port.setdefault(worker_port_of(conn, user_id), user_id)
    first, second = sorted(by_port)
    return by_port[first], by_port[second]


def pipeline_begin_and_scope(conn: psycopg.Connection[Any], user_id: str) -> list[str]:
    """BEGIN and ``select probe.scope($1)`` as one libpq pipeline batch with one Sync.

    The result statuses, in order; the connection is left in the open transaction.
    """
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(b"begin", None)
        pgconn.send_query_params(b"select probe.scope($1)", [user_id.encode()])
        pgconn.pipeline_sync()
        statuses: list[str] = []
        while True:
            result = pgconn.get_result()
            if result is None:
                continue
            statuses.append(pq.ExecStatus(result.status).name)
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise AssertionError(result.error_message.decode())
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return statuses
    finally:
        pgconn.exit_pipeline_mode()
