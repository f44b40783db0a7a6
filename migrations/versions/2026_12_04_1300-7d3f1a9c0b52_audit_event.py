"""audit_event: who did what to which task, conversation or message, and when; no content.

ADR 0009: rows are deleted for real (no soft delete), and this append-only trail records each
insert, update and delete a user makes on their task, conversation and message rows (including
the messages a conversation's delete takes with it): the user_id, the action, the table, the
row's id and the time. It is an owned table like the others
(forced RLS, the owner policies, user_id leading its primary key), but the app role may only
read and add rows: update and delete are not granted. A user's trail goes with their account
(on delete cascade).

Frozen history: the SQL is inline; the protection comes from enable_owner_rls.

Revision ID: 7d3f1a9c0b52
Revises: 5b7e9c1d2a40
Create Date: 2026-12-04 13:00:00
"""

from collections.abc import Sequence

from alembic import op

from todo_rls.owner_rls import disable_owner_rls, enable_owner_rls
from todo_rls.users_table import users_table_of

revision: str = "7d3f1a9c0b52"
down_revision: str | None = "5b7e9c1d2a40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDITED_TABLES = ("task", "conversation", "message")

# user_id leads the primary key (and every index): the table is distributable by user_id, and
# the policies' filter has an index. No column holds a row's content.
CREATE_TABLE = r"""
create table public.audit_event (
  user_id text not null,
  id uuid not null default gen_random_uuid(),
  occurred_at timestamptz not null default clock_timestamp(),
  action text not null,
  table_name text not null,
  row_id uuid not null,
  constraint pk_audit_event primary key (user_id, id),
  constraint fk_audit_event_user_id_user
    foreign key (user_id) references public."user" (id) on delete cascade,
  constraint ck_audit_event_action_known check (action in ('insert', 'update', 'delete')),
  constraint ck_audit_event_table_name_known
    check (table_name in ('task', 'conversation', 'message'))
);
create index ix_audit_event_user_id_occurred_at_id
  on public.audit_event (user_id, occurred_at, id);
"""

# Runs as the caller (not SECURITY DEFINER), and records only the scoped user's own actions:
# a change to a row of the user the transaction is scoped to (app.user_id). Anything else (a
# maintenance role, Better Auth deleting an account and the cascade that follows) is not that
# user's action and is not recorded; the app role's insert passes audit_event's own insert
# policy for exactly that user. pg_trigger_depth() cannot tell cascades apart: foreign-key
# actions fire their triggers at the end of the outer statement, at depth 1. The raw setting
# only decides whether to try: the insert passes audit_event's policy, which verifies the
# context (revision 5b7e9c1d2a40), and a forged context never gets this far (the audited
# table's own policies refuse it first); todo_rls.current_user_id() itself is not callable by
# Better Auth's role, whose account deletions fire this trigger too.
CREATE_FUNCTION = """
create function public.todo_rls_audit() returns trigger
  language plpgsql
  set search_path = ''
as $$
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
$$;
revoke all on function public.todo_rls_audit() from public;
"""


def upgrade() -> None:
    users = users_table_of(op)
    op.execute(
        CREATE_TABLE.replace('references public."user" (id)', f"references {users.sql} (id)")
    )
    # user_id_statistics=True: what enable_owner_rls did when this revision was written;
    # 9a4c6e8b2d10 takes user_id's statistics away later (ADR 0011).
    enable_owner_rls(op, "audit_event", updated_at=False, index=True, user_id_statistics=True)
    # Append-only for the app: its update and delete policies exist, like every owned table's,
    # but without the privileges they have nothing to apply to.
    op.execute("revoke update, delete on public.audit_event from todo_app")
    op.execute(CREATE_FUNCTION)
    for table in AUDITED_TABLES:
        op.execute(
            f"create trigger {table}_audit after insert or update or delete on public.{table}"
            " for each row execute function public.todo_rls_audit()"
        )


def downgrade() -> None:
    for table in reversed(AUDITED_TABLES):
        op.execute(f"drop trigger {table}_audit on public.{table}")
    op.execute("drop function public.todo_rls_audit()")
    op.execute("grant update, delete on public.audit_event to todo_app")  # as enable left it
    disable_owner_rls(op, "audit_event", updated_at=False, index=True, user_id_statistics=True)
    op.execute("drop table public.audit_event")
