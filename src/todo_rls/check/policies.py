"""The policies on the tables in scope, as the policy rules need them."""

from dataclasses import dataclass

from todo_rls.check.context import Context

# Per clause: is the stored predicate (pg_node_tree), at its top, text equality (texteq, oid
# 98) under a deterministic collation? That is what the canonical check is once parsed; its
# text can look canonical while user_id has a case-insensitive collation ('ALICE' = 'alice').
# Every policy on a table in scope; applies = it binds the app role or one of its login roles
# (named, through membership, or as PUBLIC).
_POLICIES = """
    select p.polrelid::int, p.polname::text, p.polcmd::text, p.polpermissive,
           0 = any(p.polroles),
           exists (select from unnest(p.polroles) r(oid), unnest(%(roles)s::oid[]) a(oid)
                   where r.oid <> 0 and pg_catalog.pg_has_role(a.oid, r.oid, 'MEMBER')),
           pg_catalog.pg_get_expr(p.polqual, p.polrelid),
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
           coalesce(p.polqual::text ~ '^\\{OPEXPR :opno 98 ' and (
             select c.collisdeterministic from pg_catalog.pg_collation c
             where c.oid = pg_catalog.substring(p.polqual::text, ':inputcollid (\\d+) ')::oid),
             false),
           coalesce(p.polwithcheck::text ~ '^\\{OPEXPR :opno 98 ' and (
             select c.collisdeterministic from pg_catalog.pg_collation c
             where c.oid = pg_catalog.substring(p.polwithcheck::text, ':inputcollid (\\d+) ')::oid),
             false),
           p.oid::int
    from pg_catalog.pg_policy p
    where p.polrelid = any(%(tables)s::oid[])
    order by 1, 2
"""


@dataclass(frozen=True)
class Policy:
    """One row of pg_policy, with its roles reduced to: PUBLIC? bound to the app's roles?"""

    table: int
    name: str
    command: str  # r a w d or * (all)
    permissive: bool
    public: bool
    to_app: bool
    using: str | None
    check: str | None
    using_is_text_equality: bool
    check_is_text_equality: bool
    oid: int

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
