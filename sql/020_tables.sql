-- Tables owned by Better Auth users: every row carries its owner's id, which the policies key on.
-- Better Auth owns public."user"; this file only references it.
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
-- Serves the list filtered by completed (keyset on created_at, id) and the open-task count.
create index ix_task_user_id_completed_created_at_id
  on public.task (user_id, completed, created_at, id);
-- Serves the unfiltered list page (keyset on created_at, id) and the cascade from "user".
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
-- Serves the conversation list, most recently active first (keyset on updated_at, id).
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
  -- Composite: a message can only point into a conversation of the same user.
  constraint fk_message_conversation_id_user_id_conversation
    foreign key (conversation_id, user_id)
    references public.conversation (id, user_id) on delete cascade,
  constraint ck_message_role_known check (role in ('user', 'assistant', 'system', 'tool'))
);
-- Serves a conversation's messages in order (keyset on created_at, id) and both cascades.
create index ix_message_user_id_conversation_id_created_at_id
  on public.message (user_id, conversation_id, created_at, id);

-- The planner's statistics answer EXPLAIN's row estimates for any role that may query a table,
-- policies or not, so a common value of another user's text could be read back through them.
-- Free-text columns keep none; no query filters or sorts on them.
alter table public.task alter column title set statistics 0,
  alter column description set statistics 0;
alter table public.conversation alter column title set statistics 0;
alter table public.message alter column content set statistics 0;
