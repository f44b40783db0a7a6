"""Rules POL001-POL005: each command has a policy for the app role, in the canonical form."""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit
from todo_rls.check.policies import Policy, policies
from todo_rls.check.predicate import CANONICAL_SQL, Shape, has_bare_setting, shape

COMMANDS = {"r": "select", "a": "insert", "w": "update", "d": "delete"}


def _on(ctx: Context, policy: Policy) -> str:
    return f"policy {policy.name} on {ctx.table(policy.table).name}"


def _alter_policy(ctx: Context, policy: Policy, message: str, change: str) -> Hit:
    """A hit on policy's table whose fix is `alter policy ... <change>;`."""
    table = ctx.table(policy.table).name
    return Hit(table, message, f"alter policy {policy.name} on {table} {change};")


def _predicates(ctx: Context, permissive_only: bool) -> Iterator[tuple[Policy, str, str]]:
    """(policy, clause, expression) for each USING / WITH CHECK of the app's policies."""
    for policy in policies(ctx):
        if not policy.applies or (permissive_only and not policy.permissive):
            continue
        for clause, expression in (("USING", policy.using), ("WITH CHECK", policy.check)):
            if expression is not None:
                yield policy, clause, expression


def _make_canonical(ctx: Context, policy: Policy, clause: str, problem: str) -> Hit:
    """A hit on one clause of policy whose fix sets that clause to the canonical check."""
    message = f"{_on(ctx, policy)}: {clause} {problem}"
    return _alter_policy(ctx, policy, message, f"{clause.lower()} ({CANONICAL_SQL})")


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
            yield _alter_policy(
                ctx,
                policy,
                f"{_on(ctx, policy)} applies to PUBLIC (every role), not to {ctx.app_role.name}",
                f"to {ctx.app_role.name}",
            )


def fail_open_predicate(ctx: Context) -> Iterator[Hit]:
    """Permissive predicates other than the canonical owner check (restrictive ones only narrow)."""
    for policy, clause, expression in _predicates(ctx, permissive_only=True):
        if shape(expression) is Shape.OTHER:
            yield _make_canonical(
                ctx,
                policy,
                clause,
                f"{expression} is not the canonical owner check; "
                "it may be always true or true when app.user_id is unset or ''",
            )


def update_without_check(ctx: Context) -> Iterator[Hit]:
    """UPDATE (or ALL) policies without WITH CHECK: safe only while USING stays the same."""
    for policy in policies(ctx):
        if policy.applies and policy.command in ("w", "*") and policy.check is None:
            yield _alter_policy(
                ctx,
                policy,
                f"{_on(ctx, policy)} has no WITH CHECK: PostgreSQL reuses USING, so whether a "
                "row may be re-owned depends on a clause written for reading",
                f"with check ({CANONICAL_SQL})",
            )


def setting_per_row(ctx: Context) -> Iterator[Hit]:
    """Predicates calling current_setting outside a sub-select: evaluated once per row."""
    for policy, clause, expression in _predicates(ctx, permissive_only=False):
        if has_bare_setting(expression):
            yield _make_canonical(
                ctx,
                policy,
                clause,
                "calls current_setting outside a sub-select, "
                "so it runs once per row instead of once per statement",
            )
