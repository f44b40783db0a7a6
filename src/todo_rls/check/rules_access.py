"""Rules READ001 and FN002: relations and functions that reach rows past the policies.

Both are driven by privileges, across every schema but the system ones: whatever the app role
or a login role can read or run is checked, wherever it lives.
"""

from collections.abc import Iterator

from todo_rls.check.context import DEFAULT_ALLOW, Context
from todo_rls.check.findings import Hit

# Relations (tables, partitioned tables, views, materialized views, foreign tables) an app role
# can read or write, that are not protected by forced RLS nor a security_invoker view. Tables
# in scope are left to RLS001/RLS002, views of the app schema to VIEW001, and tables named
# with --allow are the user's call; the default allowlist (Better Auth's tables, which hold
# password hashes and sessions) is not exempt: the app role needs no grant on them.
_READABLE = """
    select c.oid::int, pg_catalog.format('%%I.%%I', n.nspname, c.relname), c.relkind::text,
           array(select p.privilege from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE'])
                   p(privilege)
                 where exists (
                   select from unnest(%(roles)s::oid[]) r(oid)
                   join pg_catalog.pg_roles rr on rr.oid = r.oid and not rr.rolsuper
                   where pg_catalog.has_table_privilege(r.oid, c.oid, p.privilege)
                      or (p.privilege <> 'DELETE'
                          and pg_catalog.has_any_column_privilege(r.oid, c.oid, p.privilege))))
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p', 'v', 'm', 'f')
      and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
      and c.oid <> all(%(tables)s::oid[])
      and not (c.relkind in ('r', 'p') and c.relrowsecurity and c.relforcerowsecurity)
      and not (c.relkind = 'v' and exists (
                 select from unnest(c.reloptions) o(option)
                 where pg_catalog.lower(o.option) ~ '^security_invoker=(true|on|yes|1)$'))
      and not (n.nspname = %(schema)s and c.relkind = 'v' and c.relname <> all(%(allow)s))
      and not (n.nspname = %(schema)s and c.relname = any(%(exempt)s))
    order by 2
"""
_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "foreign table"}


def readable_past_rls(ctx: Context) -> Iterator[Hit]:
    """Relations the app's roles can read or write that no forced policy protects."""
    exempt = [name for name in ctx.allow if name not in DEFAULT_ALLOW]
    params = {
        "roles": ctx.role_oids,
        "tables": ctx.table_oids,
        "schema": ctx.schema,
        "allow": list(ctx.allow),
        "exempt": exempt,
    }
    names = ", ".join(role.name for role in ctx.roles)
    for _, relation, kind, privileges in ctx.conn.execute(_READABLE, params):
        if not privileges:
            continue
        held = ", ".join(privileges)
        view_fix = (
            f"alter view {relation} set (security_invoker = true);"
            if ctx.has_security_invoker
            else "drop it, PostgreSQL 14 has no security_invoker;"
        )
        yield Hit(
            relation,
            f"the app's roles ({names}) hold {held} on {_KINDS[kind]} {relation}, which no "
            "forced row-level security protects: every row of it is theirs to "
            + ("see" if privileges == ["SELECT"] else "see or change"),
            f"revoke all on {relation} from {ctx.app_role.name}, public; (or for a view: "
            f"{view_fix} for a table of your own without owners: --allow it)",
        )


# SECURITY DEFINER functions an app role can execute whose owner ignores the policies: a
# superuser, a BYPASSRLS role, or (a member of) the owner of a table in scope.
_DEFINERS = """
    select pg_catalog.format('%%I.%%I(%%s)', n.nspname, p.proname,
                             pg_catalog.pg_get_function_identity_arguments(p.oid)),
           o.rolname::text,
           case when o.rolsuper then 'a superuser' when o.rolbypassrls then 'BYPASSRLS'
                else 'the owner of a protected table' end
    from pg_catalog.pg_proc p
    join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    join pg_catalog.pg_roles o on o.oid = p.proowner
    where p.prosecdef and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
      and (o.rolsuper or o.rolbypassrls
           or exists (select from pg_catalog.pg_class c where c.oid = any(%(tables)s::oid[])
                      and pg_catalog.pg_has_role(o.oid, c.relowner, 'MEMBER')))
      and exists (select from unnest(%(roles)s::oid[]) r(oid)
                  join pg_catalog.pg_roles rr on rr.oid = r.oid and not rr.rolsuper
                  where pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE'))
    order by 1
"""


def definer_of_a_bypassing_owner(ctx: Context) -> Iterator[Hit]:
    """SECURITY DEFINER functions the app can run as a role the policies do not bind."""
    params = {"roles": ctx.role_oids, "tables": ctx.table_oids}
    for function, owner, why in ctx.conn.execute(_DEFINERS, params):
        yield Hit(
            f"function {function}",
            f"SECURITY DEFINER function {function} runs as {owner} ({why}), whom the policies "
            f"do not bind, and {ctx.app_role.name} can execute it: it can return every user's rows",
            f"revoke execute on function {function} from public, {ctx.app_role.name}; or alter "
            f"function {function} owner to <a role without bypass that owns no protected table>;",
        )
