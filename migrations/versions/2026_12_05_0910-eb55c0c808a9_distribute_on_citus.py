"""On Citus: the users table and the key ring reference tables, the owned tables distributed by
user_id in one colocation group, and the verified identity working on every node.

Runs only where the citus extension exists (a Citus coordinator); on plain PostgreSQL both
directions do nothing and the tables stay plain. One DO block each way, so the offline SQL
(`alembic upgrade head --sql`) carries the same run-time check. The users table is the one
TODO_RLS_USERS_TABLE names (default Better Auth's public."user").

Upgrade, in the order Citus needs (measured on Citus 13.2.2, docs/citus.md):
1. The policies lose their sub-select: Citus refuses "Subqueries are not supported in policies
   on distributed tables", also when it turns the tables into Citus local tables in step 3.
2. The verifier's keys reach the workers, where the policies run it: todo_rls.signing_key
   becomes a reference table (a copy on every node, written through the coordinator as
   before); the verifier may read it from inside a shard query
   (citus.allow_nested_distributed_execution, set on the verifier only: the read is local,
   every node holds a placement). The key-change trigger fires on every placement, so each
   node makes its own backends recompile the verifier (refresh_signing_keys() with DDL
   propagation off: a worker may not propagate DDL). The functions are marked distributed so
   that a database that had them before the extension gets them on the workers too.
3. The users table becomes a reference table: a distributed table may reference a reference
   table, never a plain one. Better Auth's tables that reference it (session, account) become
   Citus local tables on the coordinator, automatically.
4. message's composite foreign key is dropped, the five owned tables (audit_event included)
   are distributed by user_id in task's colocation group (conversation could not be
   distributed while a plain message table referenced it), and the key is added back.
   citus.enable_unsafe_triggers is on while distributing, for the updated_at and audit
   triggers (each touches its own row, or its user's co-located shard), and back after.
5. begin_scope sets the context with SET LOCAL, which Citus forwards to the workers; the
   audit trigger writes into the co-located audit_event shard.

Downgrade: undistribute_table on the users table with cascade_via_foreign_keys turns it and
every table tied to it by a foreign key (ours, Better Auth's, and any of the app's own) back
into plain tables with their rows, keys, grants, triggers and policies; then the key ring, and
the single-node functions and policies.

Revision ID: eb55c0c808a9
Revises: f442b80e6153
Create Date: 2026-12-05 09:10:00
"""

from collections.abc import Sequence

from alembic import op

from todo_rls.users_table import users_table_of

revision: str = "eb55c0c808a9"
down_revision: str | None = "f442b80e6153"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED_TABLES = ("task", "conversation", "message", "user_preference", "audit_event")
COMMANDS = ("select", "insert", "update", "delete")
# The policies' predicate on distributed tables: the verifier of revision 5b7e9c1d2a40 without
# its sub-select, which Citus refuses. With an index leading with user_id it is an index
# condition (evaluated once per scan); as a filter, once per row.
CITUS_OWNER_MATCHES = "user_id = todo_rls.current_user_id()"
# The single-node predicate (an InitPlan: once per statement), restored by the downgrade.
SINGLE_NODE_OWNER_MATCHES = "user_id = (select todo_rls.current_user_id())"
# The functions of schema todo_rls (revision 5b7e9c1d2a40) besides signing_key_ring(), whose
# body depends on the key table (distributed after the table).
TODO_RLS_FUNCTIONS = (
    "todo_rls.current_user_id()",
    "todo_rls.refresh_signing_keys()",
    "todo_rls.signing_key_changed()",
    "todo_rls.begin_scope(text, text, text, text, boolean)",
)


def _alter_policies(predicate: str) -> str:
    """ALTER POLICY for every policy of the owned tables, each keeping its command's clauses."""
    clauses = {
        "select": f"using ({predicate})",
        "insert": f"with check ({predicate})",
        "update": f"using ({predicate}) with check ({predicate})",
        "delete": f"using ({predicate})",
    }
    return "\n".join(
        f"  alter policy {table}_{command} on public.{table} {clauses[command]};"
        for table in OWNED_TABLES
        for command in COMMANDS
    )


IS_CITUS = "select from pg_catalog.pg_extension where extname = 'citus'"

# begin_scope as revision 5b7e9c1d2a40 made it, but the context set with SET LOCAL through
# EXECUTE: Citus forwards SET LOCAL (not set_config) to every worker transaction when
# citus.propagate_set_commands is 'local', in the BEGIN it sends each worker (no extra round
# trip). Inside a function, so the SET is not part of a multi-statement message (Citus would
# forward the whole message). The wrapper runs it once, first in the transaction, so no
# savepoint can desynchronise the nodes (RELEASE SAVEPOINT after a second SET LOCAL does).
CITUS_SCOPE_BODY = """
begin
  reset all;
  perform pg_catalog.set_config('role', coalesce(scope_role, 'none'), true);
  perform pg_catalog.set_config('search_path', scope_search_path, true);
  perform pg_catalog.set_config('row_security', 'on', true);
  perform pg_catalog.set_config('citus.propagate_set_commands', 'local', true);
  execute pg_catalog.format('set local app.user_id = %L', coalesce(scope_user_id, ''));
  execute pg_catalog.format('set local app.user_sig = %L', coalesce(scope_signature, ''));
  if refuse_sql_prepared
     and exists (select from pg_catalog.pg_prepared_statements p where p.from_sql) then
    raise exception 'todo_rls: this connection holds statements prepared with SQL'
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Discard the connection; nothing the app runs should call PREPARE.';
  end if;
  return current_user;
end
"""
SINGLE_NODE_SCOPE_BODY = """
begin
  reset all;
  perform pg_catalog.set_config('role', coalesce(scope_role, 'none'), true);
  perform pg_catalog.set_config('search_path', scope_search_path, true);
  perform pg_catalog.set_config('row_security', 'on', true);
  perform pg_catalog.set_config('app.user_id', coalesce(scope_user_id, ''), true);
  perform pg_catalog.set_config('app.user_sig', coalesce(scope_signature, ''), true);
  if refuse_sql_prepared
     and exists (select from pg_catalog.pg_prepared_statements p where p.from_sql) then
    raise exception 'todo_rls: this connection holds statements prepared with SQL'
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Discard the connection; nothing the app runs should call PREPARE.';
  end if;
  return current_user;
end
"""


def _begin_scope(body: str) -> str:
    return f"""
  create or replace function todo_rls.begin_scope(
    scope_user_id text, scope_signature text, scope_search_path text, scope_role text,
    refuse_sql_prepared boolean
  ) returns text
    language plpgsql volatile
  as $scope${body}$scope$;"""


# On Citus the trigger fires on the shards, on the workers: an insert into public.audit_event
# there would be a distributed query from a shard (refused). The user's audit_event shard is
# co-located with the audited row's shard, so it is on the same node. The shard's name carries
# its id (task_102008): the audited table's name is what precedes it.
CITUS_AUDIT_BODY = """
declare
  owner text := case tg_op when 'DELETE' then old.user_id else new.user_id end;
  shard bigint;
begin
  if owner is distinct from (
    select nullif(pg_catalog.current_setting('app.user_id', true), '')) then
    return null;
  end if;
  shard := pg_catalog.get_shard_id_for_distribution_column('public.audit_event', owner);
  execute pg_catalog.format(
    'insert into public.%I (user_id, action, table_name, row_id) values ($1, $2, $3, $4)',
    'audit_event_' || shard)
    using owner, pg_catalog.lower(tg_op),
          pg_catalog.regexp_replace(tg_table_name, '_[0-9]+$', ''),
          case tg_op when 'DELETE' then old.id else new.id end;
  return null;
end
"""
SINGLE_NODE_AUDIT_BODY = """
declare
  owner text := case tg_op when 'DELETE' then old.user_id else new.user_id end;
begin
  if owner is distinct from (
    select nullif(pg_catalog.current_setting('app.user_id', true), '')) then
    return null;
  end if;
  insert into public.audit_event (user_id, action, table_name, row_id)
  values (owner, pg_catalog.lower(tg_op), tg_table_name,
          case tg_op when 'DELETE' then old.id else new.id end);
  return null;
end
"""


def _audit_function(body: str) -> str:
    return f"""
  create or replace function public.todo_rls_audit() returns trigger
    language plpgsql
    set search_path = ''
  as $audit${body}$audit$;"""


def _upgrade(users_literal: str) -> str:
    distribute_functions = "\n".join(
        f"  perform pg_catalog.create_distributed_function('{function}');"
        for function in TODO_RLS_FUNCTIONS
    )
    return f"""
do $$
declare
  unsafe_triggers text;
begin
  if not exists ({IS_CITUS}) then
    return;  -- plain PostgreSQL: nothing to distribute
  end if;
  if not exists (select from pg_catalog.pg_dist_node
                 where isactive and noderole = 'primary' and shouldhaveshards) then
    raise exception 'the citus extension is installed but no node can hold shards'
      using hint = 'Register the nodes first: select citus_set_coordinator_host(...); '
                   'select citus_add_node(...) for each worker (docs/citus.md).';
  end if;
  -- user_id keeps no planner statistics (ADR 0011, 9a4c6e8b2d10). Citus refuses to change a
  -- distributed table's statistics target later and copies it into each shard it creates
  -- now, so it is set first, while the tables are still plain (a foreign key to the
  -- reference table would make them Citus local tables): the shards never gather any.
  alter table public.task alter column user_id set statistics 0;
  alter table public.conversation alter column user_id set statistics 0;
  alter table public.message alter column user_id set statistics 0;
  alter table public.user_preference alter column user_id set statistics 0;
  alter table public.audit_event alter column user_id set statistics 0;
{_alter_policies(CITUS_OWNER_MATCHES)}
  alter function todo_rls.refresh_signing_keys() set citus.enable_ddl_propagation = off;
  -- The functions before the key table: copying the installed keys into the placements fires
  -- the key-change trigger on every node, which calls them there. The verifier's body names
  -- the key-ring type, which Citus copies only as a dependency of a signature (a database
  -- that predates the extension has it on the coordinator alone): a throwaway function
  -- carries it to the workers.
  create function todo_rls.signing_key_ring_carrier(todo_rls.signing_key_ring) returns void
    language sql immutable as $carrier$ select $carrier$;
  perform pg_catalog.create_distributed_function(
    'todo_rls.signing_key_ring_carrier(todo_rls.signing_key_ring)');
  drop function todo_rls.signing_key_ring_carrier(todo_rls.signing_key_ring);
{distribute_functions}
  alter function todo_rls.current_user_id() set citus.allow_nested_distributed_execution = on;
  unsafe_triggers := pg_catalog.current_setting('citus.enable_unsafe_triggers');
  perform pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
  perform pg_catalog.create_reference_table('todo_rls.signing_key');
  -- Its body (BEGIN ATOMIC) reads the key table: distributed once the table is.
  perform pg_catalog.create_distributed_function('todo_rls.signing_key_ring()');
{_begin_scope(CITUS_SCOPE_BODY)}
  if not exists (select from pg_catalog.pg_dist_partition
                 where logicalrelid = {users_literal}::regclass) then
    perform pg_catalog.create_reference_table({users_literal});
  end if;
  alter table public.message drop constraint fk_message_conversation_id_user_id_conversation;
  perform pg_catalog.create_distributed_table('public.task', 'user_id');
  perform pg_catalog.create_distributed_table('public.conversation', 'user_id',
                                              colocate_with => 'public.task');
  perform pg_catalog.create_distributed_table('public.message', 'user_id',
                                              colocate_with => 'public.task');
  perform pg_catalog.create_distributed_table('public.user_preference', 'user_id',
                                              colocate_with => 'public.task');
  perform pg_catalog.create_distributed_table('public.audit_event', 'user_id',
                                              colocate_with => 'public.task');
  perform pg_catalog.set_config('citus.enable_unsafe_triggers', unsafe_triggers, true);
  alter table public.message add constraint fk_message_conversation_id_user_id_conversation
    foreign key (conversation_id, user_id)
    references public.conversation (id, user_id) on delete cascade;
{_audit_function(CITUS_AUDIT_BODY)}
end
$$
"""


def _downgrade(users_literal: str) -> str:
    return f"""
do $$
declare
  owned regclass;
begin
  if not exists ({IS_CITUS}) then
    return;  -- plain PostgreSQL: the upgrade changed nothing
  end if;
  if exists (select from pg_catalog.pg_dist_partition
             where logicalrelid = {users_literal}::regclass) then
    perform pg_catalog.undistribute_table({users_literal}, cascade_via_foreign_keys => true);
  end if;
  -- An owned table still distributed (not tied to the users table any more): undistribute it.
  for owned in
    select p.logicalrelid from pg_catalog.pg_dist_partition p
    where p.logicalrelid in ('public.task'::regclass, 'public.conversation'::regclass,
                             'public.message'::regclass, 'public.user_preference'::regclass,
                             'public.audit_event'::regclass)
  loop
    perform pg_catalog.undistribute_table(owned, cascade_via_foreign_keys => true);
  end loop;
  if exists (select from pg_catalog.pg_dist_partition
             where logicalrelid = 'todo_rls.signing_key'::regclass) then
    perform pg_catalog.undistribute_table('todo_rls.signing_key');
  end if;
  -- Back to the default target the upgrade found (undistribute_table keeps the shell's).
  alter table public.task alter column user_id set statistics -1;
  alter table public.conversation alter column user_id set statistics -1;
  alter table public.message alter column user_id set statistics -1;
  alter table public.user_preference alter column user_id set statistics -1;
  alter table public.audit_event alter column user_id set statistics -1;
  alter function todo_rls.current_user_id() reset citus.allow_nested_distributed_execution;
  alter function todo_rls.refresh_signing_keys() reset citus.enable_ddl_propagation;
{_begin_scope(SINGLE_NODE_SCOPE_BODY)}
{_audit_function(SINGLE_NODE_AUDIT_BODY)}
{_alter_policies(SINGLE_NODE_OWNER_MATCHES)}
end
$$
"""


def upgrade() -> None:
    users = users_table_of(op)
    op.execute(_upgrade(users.literal))


def downgrade() -> None:
    op.execute(_downgrade(users_table_of(op).literal))
