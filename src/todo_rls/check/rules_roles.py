"""Rules ROLE001-ROLE003: the app role and its login roles cannot step around the policies."""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit

DANGEROUS_PRIVILEGES = ("TRUNCATE", "TRIGGER", "REFERENCES")


def role_bypasses_rls(ctx: Context) -> Iterator[Hit]:
    """The app role or a login role that is superuser or BYPASSRLS: no policy applies to it."""
    for role in ctx.roles:
        attribute = "superuser" if role.superuser else "bypassrls" if role.bypassrls else None
        if attribute:
            yield Hit(
                f"role {role.name}",
                f"role {role.name} is {attribute.upper()}: row-level security never applies to it",
                f"alter role {role.name} nosuperuser nobypassrls; (on Neon: create the app's "
                "login role in SQL, not in the console)",
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
_PRIVILEGES = """
    select r.oid::int, c.oid::int, p.privilege
    from pg_catalog.pg_roles r, pg_catalog.pg_class c, unnest(%(privileges)s::text[]) p(privilege)
    where r.oid = any(%(roles)s::oid[]) and not r.rolsuper and c.oid = any(%(tables)s::oid[])
      and not pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
      and pg_catalog.has_table_privilege(r.oid, c.oid, p.privilege)
      and (r.oid = %(app)s or not pg_catalog.has_table_privilege(%(app)s, c.oid, p.privilege))
    order by 2, 1, 3
"""


def role_dangerous_privilege(ctx: Context) -> Iterator[Hit]:
    """TRUNCATE (ignores RLS), TRIGGER or REFERENCES held by the app role or a login role."""
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
