-- Protects every owned row: todo_app sees and writes only rows whose user_id equals app.user_id.
-- FORCE makes the policies bind the tables' owner too; no policy exists for any other role.
-- The (select ...) form is evaluated once per statement; nullif makes '' mean "no user".

alter table public.task enable row level security;
alter table public.task force row level security;
create policy task_select on public.task for select to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy task_insert on public.task for insert to todo_app
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy task_update on public.task for update to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')))
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy task_delete on public.task for delete to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));

alter table public.conversation enable row level security;
alter table public.conversation force row level security;
create policy conversation_select on public.conversation for select to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy conversation_insert on public.conversation for insert to todo_app
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy conversation_update on public.conversation for update to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')))
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy conversation_delete on public.conversation for delete to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));

alter table public.message enable row level security;
alter table public.message force row level security;
create policy message_select on public.message for select to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy message_insert on public.message for insert to todo_app
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy message_update on public.message for update to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')))
  with check (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
create policy message_delete on public.message for delete to todo_app
  using (user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), '')));
