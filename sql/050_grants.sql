-- The application role gets row access and nothing else: no TRUNCATE (it ignores RLS),
-- no REFERENCES, no TRIGGER, no ownership.
grant usage on schema public to todo_app;
grant select, insert, update, delete on public.task to todo_app;
grant select, insert, update, delete on public.conversation to todo_app;
grant select, insert, update, delete on public.message to todo_app;
