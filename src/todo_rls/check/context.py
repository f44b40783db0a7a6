"""What every rule of `todo-rls check` looks at: the tables in scope and the app's roles."""

from dataclasses import dataclass, field
from typing import Any

import psycopg

from todo_rls.errors import TodoRlsError

Conn = psycopg.Connection[tuple[Any, ...]]

# Better Auth's tables (no user_id; its server reads them as their owner) and Alembic's.
DEFAULT_ALLOW = ("user", "session", "account", "verification", "jwks", "alembic_version")


class CheckSetupError(TodoRlsError):
    """The options of `todo-rls check` name a role or schema the database does not have."""


@dataclass(frozen=True)
class Table:
    oid: int
    name: str  # schema-qualified and quoted as SQL needs it: public.task
    rls: bool
    force: bool
    owner: int


@dataclass(frozen=True)
class Role:
    oid: int
    name: str
    superuser: bool
    bypassrls: bool


@dataclass(frozen=True)
class Context:
    """What every rule looks at: the tables in scope and the roles the application runs as."""

    conn: Conn
    schema: str
    app_role: Role
    login_roles: tuple[Role, ...]  # LOGIN members of the app role (or those named)
    tables: tuple[Table, ...]
    allow: tuple[str, ...]  # tables and views of the app schema that need no RLS
    # What one check run read once for several rules (rules_citus: the placements' state).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def roles(self) -> tuple[Role, ...]:
        return (self.app_role, *self.login_roles)

    @property
    def has_security_invoker(self) -> bool:
        """Whether views can run as their caller (PostgreSQL 15+); on 14 they run as the owner."""
        return self.conn.info.server_version >= 150000

    @property
    def role_oids(self) -> list[int]:
        return [role.oid for role in self.roles]

    @property
    def role_names(self) -> dict[int, str]:
        return {role.oid: role.name for role in self.roles}

    @property
    def table_oids(self) -> list[int]:
        return [table.oid for table in self.tables]

    def table(self, oid: int) -> Table:
        return next(table for table in self.tables if table.oid == oid)


# Tables in scope: every table with a user_id column in a non-system schema, and every other
# table of the app schema that is not allowlisted, except Alembic version tables (a single
# version_num column, whatever the name: ours is todo_rls_alembic_version, an app's own chain
# has alembic_version or a name of its choosing). Those hold revision ids, not user rows; one
# the app's roles can read or write is READ001's (revoke the grant), not RLS's.
_TABLES = """
    select c.oid::int, pg_catalog.format('%%I.%%I', n.nspname, c.relname), c.relrowsecurity,
           c.relforcerowsecurity, c.relowner::int
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p')
      and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
      and (exists (select from pg_catalog.pg_attribute a
                   where a.attrelid = c.oid and a.attname = 'user_id' and a.attnum > 0
                     and not a.attisdropped)
           or (n.nspname = %(schema)s and c.relname <> all(%(allow)s)
               and array(select a.attname::text from pg_catalog.pg_attribute a
                         where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)
                   <> array['version_num']))
    order by 2
"""
_ROLE = """
    select oid::int, rolname::text, rolsuper, rolbypassrls from pg_catalog.pg_roles
    where rolname = %s
"""
# Real membership, recursively: pg_has_role would call every superuser a member of anything.
_LOGIN_MEMBERS = """
    with recursive member(oid) as (
      select m.member from pg_catalog.pg_auth_members m where m.roleid = %(app)s
      union
      select m.member from pg_catalog.pg_auth_members m join member on m.roleid = member.oid
    )
    select oid::int, rolname::text, rolsuper, rolbypassrls from pg_catalog.pg_roles
    where rolcanlogin and oid in (select oid from member) order by rolname
"""


def load_context(
    conn: Conn, schema: str, app_role: str, allow: list[str], login_roles: list[str] | None
) -> Context:
    """Look up the app role, its login roles and the tables in scope; refuse unknown names."""
    if conn.execute("select pg_catalog.to_regnamespace(%s)", (schema,)).fetchone() == (None,):
        raise CheckSetupError(f"schema {schema!r} does not exist: pass --schema SCHEMA")
    app = _role(conn, app_role, "--app-role")
    if login_roles is None:
        logins = tuple(Role(*row) for row in conn.execute(_LOGIN_MEMBERS, {"app": app.oid}))
    else:
        logins = tuple(_role(conn, name, "--login-role") for name in login_roles)
    rows = conn.execute(_TABLES, {"schema": schema, "allow": allow}).fetchall()
    return Context(conn, schema, app, logins, tuple(Table(*row) for row in rows), tuple(allow))


def _role(conn: Conn, name: str, option: str) -> Role:
    row = conn.execute(_ROLE, (name,)).fetchone()
    if row is None:
        raise CheckSetupError(f"role {name!r} does not exist: pass {option} ROLE")
    return Role(*row)
