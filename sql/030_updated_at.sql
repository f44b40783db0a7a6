-- Keeps updated_at right on every UPDATE, including raw SQL that forgets to set it.
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

create trigger task_set_updated_at before update on public.task
  for each row execute function public.todo_rls_set_updated_at();
create trigger conversation_set_updated_at before update on public.conversation
  for each row execute function public.todo_rls_set_updated_at();
create trigger message_set_updated_at before update on public.message
  for each row execute function public.todo_rls_set_updated_at();
