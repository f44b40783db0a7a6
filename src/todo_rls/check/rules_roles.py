"""Rules ROLE001-ROLE003: the app role and its login roles cannot step around the policies."""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit

DANGEROUS_PRIVILEGES = ("TRUNCATE", "TRIGGER", "REFERENCES")


# Superuser or BYPASSRLS roles each app role is a member of, directly or not (INHERIT or not:
# a member can always SET ROLE). Neon's console roles are members of neon_superuser this way.
_BYPASSING_GROUPS = """
    select r.oid::int, b.rolname::text, b.rolsuper
    from pg_catalog.pg_roles r, pg_catalog.pg_roles b
    where r.oid = any(%(roles)s::oid[]) and not r.rolsuper and not r.rolbypassrls
      and (b.rolsuper or b.rolbypassrls) and b.oid <> r.oid
      and pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
    order by 1, 2
"""
_ON_NEON = "(on Neon: create the app's login role in SQL, not in the console)"

# CREATEROLE held by an app role, or by a role it is a member of (and can SET ROLE to). On
# PostgreSQL 15 and older such a role can grant itself membership in any non-superuser role:
# a BYPASSRLS role or a table owner is then one GRANT and one SET ROLE away. Roles already
# reported as superuser or BYPASSRLS above are left out: one finding per way out is enough.
_CREATEROLE = """
    select r.oid::int, b.rolname::text, b.oid = r.oid
    from pg_catalog.pg_roles r, pg_catalog.pg_roles b
    where r.oid = any(%(roles)s::oid[]) and not r.rolsuper and not r.rolbypassrls
      and b.rolcreaterole and not b.rolsuper and not b.rolbypassrls
      and (b.oid = r.oid or pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER'))
    order by 1, 3 desc, 2
"""


def role_bypasses_rls(ctx: Context) -> Iterator[Hit]:
    """The app role or a login role that is, or can SET ROLE to, a superuser or BYPASSRLS role,
    or a CREATEROLE role (which can make itself a member of one)."""
    for role in ctx.roles:
        attribute = "superuser" if role.superuser else "bypassrls" if role.bypassrls else None
        if attribute:
            yield Hit(
                f"role {role.name}",
                f"role {role.name} is {attribute.upper()}: row-level security never applies to it",
                f"alter role {role.name} nosuperuser nobypassrls; {_ON_NEON}",
            )
    names = ctx.role_names
    for role, group, superuser in ctx.conn.execute(_BYPASSING_GROUPS, {"roles": ctx.role_oids}):
        attribute = "SUPERUSER" if superuser else "BYPASSRLS"
        yield Hit(
            f"role {names[role]}",
            f"role {names[role]} is a member of {group}, which is {attribute}: "
            f"after set role {group} no policy applies",
            f"revoke {group} from {names[role]}; {_ON_NEON}",
        )
    for role, group, itself in ctx.conn.execute(_CREATEROLE, {"roles": ctx.role_oids}):
        escape = (
            "it can grant itself membership in a BYPASSRLS role or a table owner"
            " (PostgreSQL 15 and older)"
        )
        if itself:
            yield Hit(
                f"role {names[role]}",
                f"role {names[role]} is CREATEROLE: {escape}",
                f"alter role {names[role]} nocreaterole; {_ON_NEON}",
            )
        else:
            yield Hit(
                f"role {names[role]}",
                f"role {names[role]} is a member of {group}, which is CREATEROLE: after set role"
                f" {group} {escape}",
                f"revoke {group} from {names[role]}; {_ON_NEON}",
            )


_OWNED = """
    select r.oid::int, c.oid::int
    from pg_catalog.pg_roles r, pg_catalog.pg_class c
    where r.oid = any(%(roles)s::oid[]) and not r.rolsuper and c.oid = any(%(tables)s::oid[])
      and pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
    order by 2, 1
"""


def role_owns_table(ctx: Context) -> Iterator[Hit]:
    """The app role or a login role owning a table (or a member of its owner): it can drop RLS."""
    names = ctx.role_names
    params = {"roles": ctx.role_oids, "tables": ctx.table_oids}
    for role, table in ctx.conn.execute(_OWNED, params):
        name = ctx.table(table).name
        yield Hit(
            name,
            f"role {names[role]} owns {name} (or is a member of its owner): it can disable "
            "row-level security or rewrite the policies",
            f"alter table {name} owner to <a migration role the app never uses>;",
        )


# A login role inherits what the app role holds: report only what it holds beyond that.
# REFERENCES can be granted per column; has_any_column_privilege also sees a table-level grant.
_PRIVILEGES = """
    with held(role, tbl, privilege) as (
      select r.oid, c.oid, p.privilege
      from pg_catalog.pg_roles r, pg_catalog.pg_class c,
           unnest(%(privileges)s::text[]) p(privilege)
      where r.oid = any(%(roles)s::oid[]) and not r.rolsuper and c.oid = any(%(tables)s::oid[])
        and not pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
        and case when p.privilege = 'REFERENCES'
                 then pg_catalog.has_any_column_privilege(r.oid, c.oid, p.privilege)
                 else pg_catalog.has_table_privilege(r.oid, c.oid, p.privilege) end
    )
    select role::int, tbl::int, privilege from held
    where role = %(app)s
       or not exists (select from held app
                      where app.role = %(app)s and app.tbl = held.tbl
                        and app.privilege = held.privilege)
    order by 2, 1, 3
"""
# CREATE on the app schema (or a schema of a table in scope): the app could add functions or
# operators that shadow what other roles' unqualified names resolve to.
_SCHEMA_CREATE = """
    select r.oid::int, n.nspname::text, pg_catalog.format('%%I', n.nspname)
    from pg_catalog.pg_roles r, pg_catalog.pg_namespace n
    where r.oid = any(%(roles)s::oid[]) and not r.rolsuper
      and (n.nspname = %(schema)s or n.oid in (select c.relnamespace from pg_catalog.pg_class c
                                               where c.oid = any(%(tables)s::oid[])))
      and not pg_catalog.pg_has_role(r.oid, n.nspowner, 'MEMBER')
      and pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE')
      and (r.oid = %(app)s or not pg_catalog.has_schema_privilege(%(app)s, n.oid, 'CREATE'))
    order by 2, 1
"""


def role_dangerous_privilege(ctx: Context) -> Iterator[Hit]:
    """TRUNCATE (ignores RLS), TRIGGER, REFERENCES or CREATE on the app schema, held by the app."""
    names = ctx.role_names
    params = {
        "roles": ctx.role_oids,
        "tables": ctx.table_oids,
        "privileges": list(DANGEROUS_PRIVILEGES),
        "app": ctx.app_role.oid,
    }
    for role, table, privilege in ctx.conn.execute(_PRIVILEGES, params):
        name = ctx.table(table).name
        yield Hit(
            name,
            f"role {names[role]} holds {privilege} on {name}"
            + (": TRUNCATE empties the table past every policy" if privilege == "TRUNCATE" else ""),
            f"revoke {privilege.lower()} on {name} from {names[role]};"
            " (and from public, if granted there)",
        )

    params = {
        "roles": ctx.role_oids,
        "tables": ctx.table_oids,
        "schema": ctx.schema,
        "app": ctx.app_role.oid,
    }
    for role, _, schema in ctx.conn.execute(_SCHEMA_CREATE, params):
        yield Hit(
            f"schema {schema}",
            f"role {names[role]} holds CREATE on schema {schema}: it can add objects (functions, "
            "operators, views) that other roles' unqualified names resolve to",
            f"revoke create on schema {schema} from {names[role]};"
            " (and from public, if granted there)",
        )
