"""user_preference: one row of settings per user, protected like the core tables.

Frozen history: all SQL is inline. The protection is what todo_rls.owner_rls.enable_owner_rls
emitted when this revision was written (policies keyed on the bare app.user_id setting);
revision 5b7e9c1d2a40 replaced those policies with the verified identity.

Revision ID: 02e680687f90
Revises: 3f9c2a7d1b04
Create Date: 2026-12-01 17:00:00
"""

from collections.abc import Sequence

from alembic import op

from todo_rls.users_table import users_table_of

revision: str = "02e680687f90"
down_revision: str | None = "3f9c2a7d1b04"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# user_id is the primary key: the key itself makes "one row per user" true, an upsert has a
# natural conflict target, and there is no second id to look rows up by.
CREATE_TABLE = r"""
create table public.user_preference (
  user_id text not null,
  theme text not null default 'system',
  language text not null default 'en',
  notify_email boolean not null default true,
  notify_push boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pk_user_preference primary key (user_id),
  constraint fk_user_preference_user_id_user
    foreign key (user_id) references public."user" (id) on delete cascade,
  constraint ck_user_preference_theme_known check (theme in ('system', 'light', 'dark')),
  constraint ck_user_preference_language_tag check (language ~ '^[a-z]{2,3}(-[A-Z]{2})?$')
);
-- No query filters on these; without statistics EXPLAIN cannot estimate how common a choice is.
alter table public.user_preference alter column theme set statistics 0,
  alter column language set statistics 0;
"""

# enable_owner_rls(op, "user_preference") as it was: a precondition, then the protection.
PRECONDITION = """do $$
declare
  missing text;
begin
  if pg_catalog.to_regclass('public.user_preference') is null then
    raise exception 'table % does not exist', 'public.user_preference'
      using hint = 'Create the table before calling enable_owner_rls in the same migration.';
  end if;
  select pg_catalog.string_agg(c.name, ', ') into missing
  from pg_catalog.unnest(array['user_id', 'updated_at']) as c(name)
  where not exists (
    select from pg_catalog.pg_attribute a
    where a.attrelid = 'public.user_preference'::regclass and a.attname = c.name
      and not a.attisdropped
      and a.atttypid = case c.name when 'user_id' then 'text'::regtype
                                   else 'timestamptz'::regtype end);
  if missing is not null then
    raise exception 'table % lacks column(s) of the expected type: %', 'public.user_preference',
      missing
      using hint = 'An owned table needs user_id text (and updated_at timestamptz unless '
                   'updated_at=False is passed).';
  end if;
  if exists (
    select from pg_catalog.pg_attribute a
    join pg_catalog.pg_collation c on c.oid = a.attcollation
    where a.attrelid = 'public.user_preference'::regclass and a.attname = 'user_id'
      and not c.collisdeterministic) then
    -- Under a case-insensitive collation 'ALICE' = 'alice': the policies would match other ids.
    raise exception 'user_id of % has a nondeterministic collation', 'public.user_preference'
      using hint = 'Give it the default collation first: alter table ' || 'public.user_preference'
                   || ' alter column user_id type text collate "default";';
  end if;
end
$$"""
PROTECT = (
    "alter table public.user_preference enable row level security",
    "alter table public.user_preference force row level security",
    (
        "create policy user_preference_select on public.user_preference for select to "
        "todo_app using (user_id = (select "
        "nullif(pg_catalog.current_setting('app.user_id', true), '')))"
    ),
    (
        "create policy user_preference_insert on public.user_preference for insert to "
        "todo_app with check (user_id = (select "
        "nullif(pg_catalog.current_setting('app.user_id', true), '')))"
    ),
    (
        "create policy user_preference_update on public.user_preference for update to "
        "todo_app using (user_id = (select "
        "nullif(pg_catalog.current_setting('app.user_id', true), ''))) with check "
        "(user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')))"
    ),
    (
        "create policy user_preference_delete on public.user_preference for delete to "
        "todo_app using (user_id = (select "
        "nullif(pg_catalog.current_setting('app.user_id', true), '')))"
    ),
    "grant select, insert, update, delete on public.user_preference to todo_app",
    (
        "create trigger user_preference_set_updated_at before update on "
        "public.user_preference for each row execute function "
        "public.todo_rls_set_updated_at()"
    ),
)
UNPROTECT = (
    "drop trigger user_preference_set_updated_at on public.user_preference",
    "revoke select, insert, update, delete on public.user_preference from todo_app",
    "drop policy user_preference_delete on public.user_preference",
    "drop policy user_preference_update on public.user_preference",
    "drop policy user_preference_insert on public.user_preference",
    "drop policy user_preference_select on public.user_preference",
    "alter table public.user_preference no force row level security",
    "alter table public.user_preference disable row level security",
)


def upgrade() -> None:
    # The foreign key points at TODO_RLS_USERS_TABLE's table if set (its name stays the same).
    users = users_table_of(op)
    op.execute(
        CREATE_TABLE.replace('references public."user" (id)', f"references {users.sql} (id)")
    )
    op.execute(PRECONDITION)
    for statement in PROTECT:
        op.execute(statement)


def downgrade() -> None:
    for statement in UNPROTECT:
        op.execute(statement)
    op.execute("drop table public.user_preference")
