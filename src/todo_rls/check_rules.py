"""The rules of `todo-rls check`: each one a small catalog query that yields findings."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from todo_rls.check_predicate import Shape, has_bare_setting, shape
from todo_rls.errors import TodoRlsError

Severity = Literal["error", "warning"]
Conn = psycopg.Connection[tuple[Any, ...]]
CANONICAL_SQL = "user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), ''))"
COMMANDS = {"r": "select", "a": "insert", "w": "update", "d": "delete"}
DANGEROUS_PRIVILEGES = ("TRUNCATE", "TRIGGER", "REFERENCES")


class CheckSetupError(TodoRlsError):
    """The options of `todo-rls check` name a role or schema the database does not have."""


@dataclass(frozen=True)
class Hit:
    """What a rule found: where, what is wrong, and the SQL (or step) that fixes it."""

    object: str
    message: str
    fix: str


@dataclass(frozen=True)
class Finding:
    """A hit with the id and severity of the rule that found it."""

    object: str
    rule: str
    severity: Severity
    message: str
    fix: str


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

    @property
    def roles(self) -> tuple[Role, ...]:
        return (self.app_role, *self.login_roles)

    @property
    def role_oids(self) -> list[int]:
        return [role.oid for role in self.roles]

    @property
    def table_oids(self) -> list[int]:
        return [table.oid for table in self.tables]

    def table(self, oid: int) -> Table:
        return next(table for table in self.tables if table.oid == oid)


# Tables in scope: every table with a user_id column in a non-system schema, and every other
# table of the app schema that is not allowlisted.
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
           or (n.nspname = %(schema)s and c.relname <> all(%(allow)s)))
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


# --- tables --------------------------------------------------------------------------------


def rls_disabled(ctx: Context) -> Iterator[Hit]:
    """Tables in scope without row-level security: every role reads and writes every row."""
    for table in ctx.tables:
        if not table.rls:
            yield Hit(
                table.name,
                "row-level security is not enabled: every role with a grant sees every row",
                f"alter table {table.name} enable row level security; alter table {table.name} "
                f"force row level security; then one policy per command, e.g. create policy "
                f"... to {ctx.app_role.name} using ({CANONICAL_SQL})",
            )


def rls_not_forced(ctx: Context) -> Iterator[Hit]:
    """Tables with RLS enabled but not forced: their owner ignores every policy."""
    for table in ctx.tables:
        if table.rls and not table.force:
            yield Hit(
                table.name,
                "row-level security is not forced: the table's owner (and whoever the app "
                "runs as, if it is the owner) ignores every policy",
                f"alter table {table.name} force row level security;",
            )


# --- policies ------------------------------------------------------------------------------

# Every policy on a table in scope; applies = it binds the app role or one of its login roles
# (named, through membership, or as PUBLIC).
_POLICIES = """
    select p.polrelid::int, p.polname::text, p.polcmd::text, p.polpermissive,
           0 = any(p.polroles),
           exists (select from unnest(p.polroles) r(oid), unnest(%(roles)s::oid[]) a(oid)
                   where r.oid <> 0 and pg_catalog.pg_has_role(a.oid, r.oid, 'MEMBER')),
           pg_catalog.pg_get_expr(p.polqual, p.polrelid),
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
    from pg_catalog.pg_policy p
    where p.polrelid = any(%(tables)s::oid[])
    order by 1, 2
"""


@dataclass(frozen=True)
class Policy:
    table: int
    name: str
    command: str  # r a w d or * (all)
    permissive: bool
    public: bool
    to_app: bool
    using: str | None
    check: str | None

    @property
    def applies(self) -> bool:
        return self.public or self.to_app

    def covers(self, command: str) -> bool:
        """Whether this policy can grant command: PostgreSQL skips a policy lacking the clause."""
        if not (self.permissive and self.command in (command, "*")):
            return False
        if command == "a":
            return self.check is not None or (self.command == "*" and self.using is not None)
        return self.using is not None


def policies(ctx: Context) -> list[Policy]:
    """The policies on the tables in scope."""
    params = {"roles": ctx.role_oids, "tables": ctx.table_oids}
    return [Policy(*row) for row in ctx.conn.execute(_POLICIES, params)]


def _on(ctx: Context, policy: Policy) -> str:
    return f"policy {policy.name} on {ctx.table(policy.table).name}"


def command_without_policy(ctx: Context) -> Iterator[Hit]:
    """Commands the app role has no working permissive policy for: always denied."""
    found = policies(ctx)
    for table in ctx.tables:
        if not table.rls:
            continue  # RLS001 already says: enable it, then add the policies
        mine = [p for p in found if p.table == table.oid and p.applies]
        for code, command in COMMANDS.items():
            if not any(p.covers(code) for p in mine):
                clause = "with check" if command == "insert" else "using"
                yield Hit(
                    table.name,
                    f"no permissive {command.upper()} policy for {ctx.app_role.name}: "
                    f"every {command} is denied (fails closed, but the app is broken)",
                    f"create policy {table.name.split('.')[-1]}_{command} on {table.name} "
                    f"for {command} to {ctx.app_role.name} {clause} ({CANONICAL_SQL});",
                )


def policy_for_public(ctx: Context) -> Iterator[Hit]:
    """Policies for PUBLIC: they bind every role, including ones created later."""
    for policy in policies(ctx):
        if policy.public:
            yield Hit(
                ctx.table(policy.table).name,
                f"{_on(ctx, policy)} applies to PUBLIC (every role), not to {ctx.app_role.name}",
                f"alter policy {policy.name} on {ctx.table(policy.table).name} "
                f"to {ctx.app_role.name};",
            )


def _expressions(policy: Policy) -> Iterator[tuple[str, str]]:
    for clause, expression in (("USING", policy.using), ("WITH CHECK", policy.check)):
        if expression is not None:
            yield clause, expression


def fail_open_predicate(ctx: Context) -> Iterator[Hit]:
    """Permissive predicates other than the canonical owner check (restrictive ones only narrow)."""
    for policy in policies(ctx):
        if not (policy.applies and policy.permissive):
            continue
        for clause, expression in _expressions(policy):
            if shape(expression) is Shape.OTHER:
                yield Hit(
                    ctx.table(policy.table).name,
                    f"{_on(ctx, policy)}: {clause} {expression} is not the canonical owner check; "
                    "it may be always true or true when app.user_id is unset or ''",
                    f"alter policy {policy.name} on {ctx.table(policy.table).name} "
                    f"{clause.lower()} ({CANONICAL_SQL});",
                )


def update_without_check(ctx: Context) -> Iterator[Hit]:
    """UPDATE (or ALL) policies without WITH CHECK: safe only while USING stays the same."""
    for policy in policies(ctx):
        if policy.applies and policy.command in ("w", "*") and policy.check is None:
            yield Hit(
                ctx.table(policy.table).name,
                f"{_on(ctx, policy)} has no WITH CHECK: PostgreSQL reuses USING, so whether a "
                "row may be re-owned depends on a clause written for reading",
                f"alter policy {policy.name} on {ctx.table(policy.table).name} "
                f"with check ({CANONICAL_SQL});",
            )


def setting_per_row(ctx: Context) -> Iterator[Hit]:
    """Predicates calling current_setting outside a sub-select: evaluated once per row."""
    for policy in policies(ctx):
        if not policy.applies:
            continue
        for clause, expression in _expressions(policy):
            if has_bare_setting(expression):
                yield Hit(
                    ctx.table(policy.table).name,
                    f"{_on(ctx, policy)}: {clause} calls current_setting outside a sub-select, "
                    "so it runs once per row instead of once per statement",
                    f"alter policy {policy.name} on {ctx.table(policy.table).name} "
                    f"{clause.lower()} ({CANONICAL_SQL});",
                )


# --- roles ---------------------------------------------------------------------------------


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
    names = {role.oid: role.name for role in ctx.roles}
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
    names = {role.oid: role.name for role in ctx.roles}
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


# --- foreign keys, functions, views --------------------------------------------------------

# A foreign key from a table with user_id to another table with user_id whose column lists do
# not pair user_id with user_id: FK checks bypass RLS, so it can point into another user's row.
_FKS = """
    select k.conname::text, k.conrelid::int, k.confrelid::regclass::text,
           pg_catalog.pg_get_constraintdef(k.oid)
    from pg_catalog.pg_constraint k
    where k.contype = 'f' and k.conrelid = any(%(tables)s::oid[])
      and exists (select from pg_catalog.pg_attribute a where a.attrelid = k.confrelid
                  and a.attname = 'user_id' and not a.attisdropped)
      and exists (select from pg_catalog.pg_attribute a where a.attrelid = k.conrelid
                  and a.attname = 'user_id' and not a.attisdropped)
      and not exists (
        select from unnest(k.conkey, k.confkey) pair(child, parent)
        join pg_catalog.pg_attribute c on c.attrelid = k.conrelid and c.attnum = pair.child
        join pg_catalog.pg_attribute p on p.attrelid = k.confrelid and p.attnum = pair.parent
        where c.attname = 'user_id' and p.attname = 'user_id')
    order by 2, 1
"""


def fk_without_owner(ctx: Context) -> Iterator[Hit]:
    """Child tables whose foreign key to an owned parent does not carry user_id."""
    for constraint, child, parent_name, definition in ctx.conn.execute(
        _FKS, {"tables": ctx.table_oids}
    ):
        child_name = ctx.table(child).name
        yield Hit(
            child_name,
            f"foreign key {constraint} ({definition}) does not include user_id on both sides: "
            f"FK checks bypass RLS, so a row can point at another user's {parent_name} row",
            f"alter table {parent_name} add unique (id, user_id); alter table {child_name} "
            f"drop constraint {constraint}, add foreign key (<column>, user_id) references "
            f"{parent_name} (id, user_id);",
        )


_DEFINERS = """
    select pg_catalog.format('%%I.%%I(%%s)', n.nspname, p.proname,
                             pg_catalog.pg_get_function_identity_arguments(p.oid))
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where p.pronamespace = pg_catalog.to_regnamespace(%(schema)s) and p.prosecdef
      and not exists (select from unnest(p.proconfig) c(setting)
                      where c.setting like 'search\\_path=%%')
    order by 1
"""


def definer_without_search_path(ctx: Context) -> Iterator[Hit]:
    """SECURITY DEFINER functions without a pinned search_path: a caller can hijack them."""
    for (function,) in ctx.conn.execute(_DEFINERS, {"schema": ctx.schema}):
        yield Hit(
            f"function {function}",
            f"SECURITY DEFINER function {function} has no fixed search_path: a caller's objects "
            "(e.g. in pg_temp) can run with the owner's rights",
            f"alter function {function} set search_path = '';",
        )


_VIEWS = """
    select pg_catalog.format('%%I.%%I', n.nspname, c.relname)
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'v' and n.nspname = %(schema)s and c.relname <> all(%(allow)s)
      and not exists (select from unnest(c.reloptions) o(option)
                      where pg_catalog.lower(o.option)
                            ~ '^security_invoker=(true|on|yes|1)$')
    order by 1
"""


def view_as_owner(ctx: Context) -> Iterator[Hit]:
    """Views of the app schema that run as their owner (no security_invoker)."""
    for (view,) in ctx.conn.execute(_VIEWS, {"schema": ctx.schema, "allow": list(ctx.allow)}):
        yield Hit(
            view,
            f"view {view} runs with its owner's rights (no security_invoker): it can show rows "
            "the policies hide from the caller",
            f"alter view {view} set (security_invoker = true);",
        )


@dataclass(frozen=True)
class Rule:
    """One row of the rule table: id, severity, what it flags, and the function that looks."""

    id: str
    severity: Severity
    description: str
    check: Callable[[Context], Iterator[Hit]]


RULES: tuple[Rule, ...] = (
    Rule("RLS001", "error", "table in scope without row-level security", rls_disabled),
    Rule("RLS002", "error", "row-level security enabled but not forced", rls_not_forced),
    Rule("POL001", "warning", "command with no policy for the app role", command_without_policy),
    Rule("POL002", "error", "policy for PUBLIC instead of the app role", policy_for_public),
    Rule("POL003", "error", "predicate other than the canonical owner check (may fail open)",
         fail_open_predicate),
    Rule("POL004", "warning", "UPDATE or ALL policy without WITH CHECK", update_without_check),
    Rule("POL005", "warning", "current_setting outside a sub-select (evaluated per row)",
         setting_per_row),
    Rule("ROLE001", "error", "app or login role is superuser or BYPASSRLS", role_bypasses_rls),
    Rule("ROLE002", "error", "app or login role owns a table in scope", role_owns_table),
    Rule("ROLE003", "error", "app or login role holds TRUNCATE, TRIGGER or REFERENCES",
         role_dangerous_privilege),
    Rule("FK001", "error", "foreign key to an owned parent without user_id", fk_without_owner),
    Rule("FN001", "error", "SECURITY DEFINER function without a fixed search_path",
         definer_without_search_path),
    Rule("VIEW001", "error", "view of the app schema without security_invoker", view_as_owner),
)  # fmt: skip


def run_rules(ctx: Context, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """Every finding of every rule, in rule order."""
    return [
        Finding(hit.object, rule.id, rule.severity, hit.message, hit.fix)
        for rule in rules
        for hit in rule.check(ctx)
    ]
