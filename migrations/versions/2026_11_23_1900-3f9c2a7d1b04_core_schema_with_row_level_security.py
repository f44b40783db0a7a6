"""Core schema with row-level security: task, conversation, message and role todo_app.

Frozen history: this revision carries its own SQL. sql/ holds the current readable form,
and tests/test_sql_matches_migrations.py keeps the two equal. The users table its foreign keys
reference is public."user" unless TODO_RLS_USERS_TABLE names another (todo_rls.users_table);
for the default the SQL is exactly what it always was.

Revision ID: 3f9c2a7d1b04
Revises:
Create Date: 2026-11-23 19:00:00
"""

from collections.abc import Sequence

from alembic import op

from todo_rls.users_table import UsersTable, users_table_of

revision: str = "3f9c2a7d1b04"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "todo_app"
OWNED_TABLES = ("task", "conversation", "message")
# Fail closed: unset (NULL) and reset ('') both match no row. The sub-select is an InitPlan,
# evaluated once per statement instead of once per row.
CURRENT_USER_ID = "(select nullif(pg_catalog.current_setting('app.user_id', true), ''))"

CREATE_APP_ROLE = """
do $$
begin
  create role todo_app nologin nosuperuser nobypassrls nocreatedb nocreaterole noreplication;
  comment on role todo_app is 'todo-rls application role (created by todo-rls)';
exception
  when duplicate_object or unique_violation then
    raise notice 'role todo_app already exists; keeping it';
end
$$;

do $$
begin
  if exists (
    select from pg_catalog.pg_roles
    where rolname = 'todo_app' and (rolsuper or rolbypassrls)
  ) then
    raise exception 'role todo_app bypasses row-level security'
      using hint = 'An administrator must run: alter role todo_app nosuperuser nobypassrls';
  end if;
end
$$;
"""

# Drops the role only if todo-rls created it and no login role is a member of it;
# another database's grants (2BP01), or no right to drop it (PostgreSQL 16+: another role created
# it), also keep it.
DROP_APP_ROLE_IF_OURS = """
do $$
begin
  if exists (
    select from pg_catalog.pg_roles r
    where r.rolname = 'todo_app'
      and pg_catalog.shobj_description(r.oid, 'pg_authid')
          = 'todo-rls application role (created by todo-rls)'
      and not exists (select from pg_catalog.pg_auth_members m where m.roleid = r.oid)
  ) then
    drop role todo_app;
  else
    raise notice 'keeping role todo_app: it predates todo-rls or has members';
  end if;
exception
  when dependent_objects_still_exist then
    raise notice 'keeping role todo_app: other databases still grant it privileges';
  when insufficient_privilege then  -- PostgreSQL 16+: another role created it
    raise notice 'keeping role todo_app: % may not drop it', current_user;
end
$$;
"""

REQUIRE_BETTER_AUTH_USER_TABLE = """
do $$
begin
  if pg_catalog.to_regclass('public."user"') is null then
    raise exception 'table public."user" does not exist'
      using hint = 'Run Better Auth''s migration first (npx @better-auth/cli migrate); '
                   'todo-rls references its "user" table and never creates it.';
  end if;
  if (select a.atttypid from pg_catalog.pg_attribute a
      where a.attrelid = 'public."user"'::regclass and a.attname = 'id' and not a.attisdropped)
     is distinct from 'text'::regtype then
    raise exception 'public."user".id is missing or is not of type text'
      using hint = 'todo-rls expects Better Auth''s "user" table, whose id is text.';
  end if;
end
$$;
"""

# For a users table other than Better Auth's (TODO_RLS_USERS_TABLE, e.g. Neon Auth's): the same
# checks, plus the privileges a foreign key into another schema needs. {name} is the table's
# name as it goes inside an SQL string literal.
REQUIRE_USERS_TABLE = """
do $$
begin
  if pg_catalog.to_regclass('{name}') is null then
    raise exception 'table {name} does not exist'
      using hint = 'Create it first (Neon Auth: enable it on this branch), or set '
                   'TODO_RLS_USERS_TABLE to the table your users are in; todo-rls references '
                   'it and never creates it.';
  end if;
  if (select a.atttypid from pg_catalog.pg_attribute a
      where a.attrelid = '{name}'::regclass and a.attname = 'id' and not a.attisdropped)
     is distinct from 'text'::regtype then
    raise exception '{name}.id is missing or is not of type text'
      using hint = 'todo-rls''s user_id columns are text and reference it: the users table '
                   'needs an id column of type text.';
  end if;
  if not pg_catalog.has_table_privilege('{name}', 'REFERENCES') then
    raise exception using
      message = 'the migrating role ' || current_user || ' may not reference {name}',
      hint = 'As the owner of {name}: grant references on {name} to ' || current_user
             || ' (and usage on its schema).';
  end if;
end
$$;
"""


def _require_users_table(users: UsersTable) -> str:
    """The precondition for users: Better Auth's, word for word, or the generic one."""
    if users.is_default:
        return REQUIRE_BETTER_AUTH_USER_TABLE
    return REQUIRE_USERS_TABLE.replace("{name}", users.sql.replace("'", "''"))


def _referencing(ddl: str, users: UsersTable) -> str:
    """ddl with its foreign keys to public."user" pointed at users (names unchanged)."""
    return ddl.replace('references public."user" (id)', f"references {users.sql} (id)")


CREATE_TABLES = r"""
create table public.task (
  id uuid not null default gen_random_uuid(),
  user_id text not null,
  title text not null,
  description text,
  completed boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pk_task primary key (id),
  constraint fk_task_user_id_user
    foreign key (user_id) references public."user" (id) on delete cascade,
  constraint ck_task_title_length check (char_length(title) between 1 and 200),
  constraint ck_task_title_not_blank check (title ~ '\S')
);
create index ix_task_user_id_completed_created_at_id
  on public.task (user_id, completed, created_at, id);
create index ix_task_user_id_created_at_id on public.task (user_id, created_at, id);

create table public.conversation (
  id uuid not null default gen_random_uuid(),
  user_id text not null,
  title text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pk_conversation primary key (id),
  constraint uq_conversation_id_user_id unique (id, user_id),
  constraint fk_conversation_user_id_user
    foreign key (user_id) references public."user" (id) on delete cascade,
  constraint ck_conversation_title_valid
    check (title is null or (char_length(title) between 1 and 200 and title ~ '\S'))
);
create index ix_conversation_user_id_updated_at_id
  on public.conversation (user_id, updated_at, id);

create table public.message (
  id uuid not null default gen_random_uuid(),
  user_id text not null,
  conversation_id uuid not null,
  role text not null,
  content text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pk_message primary key (id),
  constraint fk_message_conversation_id_user_id_conversation
    foreign key (conversation_id, user_id)
    references public.conversation (id, user_id) on delete cascade,
  constraint ck_message_role_known check (role in ('user', 'assistant', 'system', 'tool'))
);
create index ix_message_user_id_conversation_id_created_at_id
  on public.message (user_id, conversation_id, created_at, id);
-- The planner's statistics answer EXPLAIN's row estimates for any role that may query a table,
-- policies or not, so a common value of another user's text could be read back through them.
-- Free-text columns keep none; no query filters or sorts on them.
alter table public.task alter column title set statistics 0,
  alter column description set statistics 0;
alter table public.conversation alter column title set statistics 0;
alter table public.message alter column content set statistics 0;
"""

CREATE_UPDATED_AT_FUNCTION = """
create function public.todo_rls_set_updated_at() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  new.updated_at := pg_catalog.now();
  return new;
end
$$;
revoke all on function public.todo_rls_set_updated_at() from public;
"""


def _protect_owned_table(table: str) -> None:
    """Give one owned table the full protection: forced RLS, a policy per command, grants."""
    quote = op.get_context().dialect.identifier_preparer.quote
    name, role = quote(table), quote(APP_ROLE)
    owner_matches = f"user_id = {CURRENT_USER_ID}"
    op.execute(f"alter table public.{name} enable row level security")
    op.execute(f"alter table public.{name} force row level security")
    op.execute(
        f"create policy {quote(table + '_select')} on public.{name} for select to {role}"
        f" using ({owner_matches})"
    )
    op.execute(
        f"create policy {quote(table + '_insert')} on public.{name} for insert to {role}"
        f" with check ({owner_matches})"
    )
    op.execute(
        f"create policy {quote(table + '_update')} on public.{name} for update to {role}"
        f" using ({owner_matches}) with check ({owner_matches})"
    )
    op.execute(
        f"create policy {quote(table + '_delete')} on public.{name} for delete to {role}"
        f" using ({owner_matches})"
    )
    op.execute(f"grant select, insert, update, delete on public.{name} to {role}")
    op.execute(
        f"create trigger {quote(table + '_set_updated_at')} before update on public.{name}"
        " for each row execute function public.todo_rls_set_updated_at()"
    )


def upgrade() -> None:
    users = users_table_of(op)
    op.execute(_require_users_table(users))
    op.execute(CREATE_APP_ROLE)
    op.execute(_referencing(CREATE_TABLES, users))
    op.execute(CREATE_UPDATED_AT_FUNCTION)
    op.execute("grant usage on schema public to todo_app")
    for table in OWNED_TABLES:
        _protect_owned_table(table)


def downgrade() -> None:
    # Dropping the tables drops their policies, grants, triggers and indexes with them;
    # the users table (public."user" or TODO_RLS_USERS_TABLE's) and its rows are never touched.
    op.execute("drop table public.message, public.conversation, public.task")
    op.execute("drop function public.todo_rls_set_updated_at()")
    op.execute("revoke usage on schema public from todo_app")
    op.execute(DROP_APP_ROLE_IF_OURS)
