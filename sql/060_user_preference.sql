-- One row of settings per user, protected like every owned table: forced RLS, one policy per
-- command for todo_app on the same "owner matches" predicate, row grants only, updated_at trigger.
-- The migration builds this with a single todo_rls.owner_rls.enable_owner_rls call.
-- user_id is the primary key: one row per user by construction, and the upsert's conflict target.
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
  -- A language with an optional region: en, fil, en-US, pt-BR (not en_US, EN, zh-Hans, es-419).
  constraint ck_user_preference_language_tag check (language ~ '^[a-z]{2,3}(-[A-Z]{2})?$')
);
-- No query filters on these; without statistics EXPLAIN cannot estimate how common a choice is.
alter table public.user_preference alter column theme set statistics 0,
  alter column language set statistics 0;

alter table public.user_preference enable row level security;
alter table public.user_preference force row level security;
create policy user_preference_select on public.user_preference for select to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy user_preference_insert on public.user_preference for insert to todo_app
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy user_preference_update on public.user_preference for update to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')))
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy user_preference_delete on public.user_preference for delete to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));

-- Row access only: no TRUNCATE (it ignores RLS), no REFERENCES, no TRIGGER.
grant select, insert, update, delete on public.user_preference to todo_app;

create trigger user_preference_set_updated_at before update on public.user_preference
  for each row execute function public.todo_rls_set_updated_at();
