"""begin_scope also drops what an earlier transaction left in the session: temporary tables
and WITH HOLD cursors.

`reset all` clears the settings an earlier client left on a pooled connection, but not the
objects. SQL injected into alice's request could copy her rows into a temporary table or a
WITH HOLD cursor; a later request on the same connection, another user's, could read them with
one more injection (tests/test_injection.py). begin_scope, which opens every transaction of
our engines (scoped, and unscoped on a connection that was ever scoped), now closes every
cursor and discards every temporary object first. Both are transactional: a transaction that
rolls back brings them back, and the next one drops them again before any statement of its own.

A consequence for apps: a temporary table or a held cursor lives at most one transaction.

The Citus body (revision eb55c0c808a9) and the single-node body differ only in how they set
the context; both get the same two statements.

Revision ID: c3e8f1a7b254
Revises: 9a4c6e8b2d10
Create Date: 2026-12-05 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "c3e8f1a7b254"
down_revision: str | None = "9a4c6e8b2d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IS_CITUS = "select from pg_catalog.pg_extension where extname = 'citus'"

DROP_SESSION_OBJECTS = """
  -- Nothing an earlier transaction made survives into this one: its temporary tables and
  -- WITH HOLD cursors could hold another request's rows.
  execute 'close all';
  discard temp;"""

SET_CONTEXT = {
    "single node": """
  perform pg_catalog.set_config('app.user_id', coalesce(scope_user_id, ''), true);
  perform pg_catalog.set_config('app.user_sig', coalesce(scope_signature, ''), true);""",
    # SET LOCAL through EXECUTE: Citus forwards it to every worker transaction (eb55c0c808a9).
    "citus": """
  perform pg_catalog.set_config('citus.propagate_set_commands', 'local', true);
  execute pg_catalog.format('set local app.user_id = %L', coalesce(scope_user_id, ''));
  execute pg_catalog.format('set local app.user_sig = %L', coalesce(scope_signature, ''));""",
}


def _begin_scope(set_context: str, drop_session_objects: str) -> str:
    return f"""
create or replace function todo_rls.begin_scope(
  scope_user_id text, scope_signature text, scope_search_path text, scope_role text,
  refuse_sql_prepared boolean
) returns text
  language plpgsql volatile
as $scope$
begin
  reset all;{drop_session_objects}
  perform pg_catalog.set_config('role', coalesce(scope_role, 'none'), true);
  perform pg_catalog.set_config('search_path', scope_search_path, true);
  perform pg_catalog.set_config('row_security', 'on', true);{set_context}
  if refuse_sql_prepared
     and exists (select from pg_catalog.pg_prepared_statements p where p.from_sql) then
    raise exception 'todo_rls: this connection holds statements prepared with SQL'
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Discard the connection; nothing the app runs should call PREPARE.';
  end if;
  return current_user;
end
$scope$"""


def _replace(drop_session_objects: str) -> str:
    """One DO block that installs the body for this database: Citus's or the single node's."""
    citus = _begin_scope(SET_CONTEXT["citus"], drop_session_objects)
    single = _begin_scope(SET_CONTEXT["single node"], drop_session_objects)
    return f"""
do $do$
begin
  if exists ({IS_CITUS}) then
    execute $ddl${citus}$ddl$;
  else
    execute $ddl${single}$ddl$;
  end if;
end
$do$"""


def upgrade() -> None:
    op.execute(_replace(DROP_SESSION_OBJECTS))


def downgrade() -> None:
    op.execute(_replace(""))
