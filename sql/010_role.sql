-- The application role: row-level security always applies to it (never SUPERUSER, never BYPASSRLS).
-- Roles are cluster-wide, so creation is idempotent; the comment marks a role todo-rls created.
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
