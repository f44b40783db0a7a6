"""Rules POL001-POL007: each command has a policy for the app role, in the canonical form."""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit
from todo_rls.check.policies import Policy, policies
from todo_rls.check.predicate import CANONICAL_SQL, Shape, has_bare_call, shape

COMMANDS = {"r": "select", "a": "insert", "w": "update", "d": "delete"}


def _on(ctx: Context, policy: Policy) -> str:
    return f"policy {policy.name} on {ctx.table(policy.table).name}"


def _alter_policy(ctx: Context, policy: Policy, message: str, change: str) -> Hit:
    """A hit on policy's table whose fix is `alter policy ... <change>;`."""
    table = ctx.table(policy.table).name
    return Hit(table, message, f"alter policy {policy.name} on {table} {change};")


def _predicates(ctx: Context, permissive_only: bool) -> Iterator[tuple[Policy, str, str, bool]]:
    """(policy, clause, expression, is text equality) per USING / WITH CHECK of the app's."""
    for policy in policies(ctx):
        if not policy.applies or (permissive_only and not policy.permissive):
            continue
        for clause, expression, text_equality in (
            ("USING", policy.using, policy.using_is_text_equality),
            ("WITH CHECK", policy.check, policy.check_is_text_equality),
        ):
            if expression is not None:
                yield policy, clause, expression, text_equality


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
    """Permissive predicates other than the canonical owner check, as text and as parsed.

    Restrictive policies are ANDed with a permissive one, so a loose restrictive predicate
    grants nothing; a function inside one is POL006's business.
    """
    for policy, clause, expression, text_equality in _predicates(ctx, permissive_only=True):
        if shape(expression) is Shape.OTHER:
            problem = (
                f"{expression} is not the canonical owner check; it may be always true, true "
                "without a verified user, or compare only part of the id"
            )
            yield _make_canonical(ctx, policy, clause, problem)
        elif not text_equality:
            # The text is canonical, so the fault is the column's: rewriting the policy would
            # change nothing. Give user_id back the default (deterministic) collation; ALTER
            # COLUMN TYPE fails while a policy depends on the column, hence the drop/re-create.
            table = ctx.table(policy.table).name
            yield Hit(
                table,
                f"{_on(ctx, policy)}: {clause} {expression} reads as the owner check, but "
                "PostgreSQL does not compare it as text equality under a deterministic "
                "collation (a case-insensitive collation on user_id makes 'ALICE' equal 'alice')",
                f'alter table {table} alter column user_id type text collate "default"; '
                "(PostgreSQL refuses to alter a column a policy uses: in one transaction, drop "
                f"the policies on {table}, alter the column, then create them again)",
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


def call_per_row(ctx: Context) -> Iterator[Hit]:
    """Predicates calling current_setting or the verifier outside a sub-select: once per row."""
    for policy, clause, expression, _ in _predicates(ctx, permissive_only=False):
        if has_bare_call(expression) and shape(expression) is not Shape.FORGEABLE:
            yield _make_canonical(
                ctx,
                policy,
                clause,
                "calls current_setting or todo_rls.current_user_id() outside a sub-select, "
                "so it may run once per row instead of once per statement",
            )


def forgeable_predicate(ctx: Context) -> Iterator[Hit]:
    """Predicates keyed on the app.user_id setting itself: any SQL the app runs can set it."""
    for policy, clause, expression, _ in _predicates(ctx, permissive_only=False):
        if shape(expression) is Shape.FORGEABLE:
            yield _make_canonical(
                ctx,
                policy,
                clause,
                f"{expression} trusts app.user_id as it is set, so one SQL injection in the "
                "app can act as any user; compare with the verified identity (in a migration of "
                "yours: todo_rls.owner_rls.refresh_owner_policies)",
            )


# Functions a policy calls, directly or as an operator's implementation, from outside
# pg_catalog and not LEAKPROOF. The planner may run them on every row before the owner check
# (restrictive or not), so a NOTICE, an error message or a side table can leak others' rows.
# A function without arguments (the verifier, todo_rls.current_user_id()) is given no row.
_POLICY_FUNCTIONS = """
    select distinct d.objid::int,
           pg_catalog.format('%%I.%%I(%%s)', n.nspname, f.proname,
                             pg_catalog.pg_get_function_identity_arguments(f.oid))
    from pg_catalog.pg_depend d
    left join pg_catalog.pg_operator o
      on d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass and o.oid = d.refobjid
    join pg_catalog.pg_proc f
      on f.oid = case when d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                      then d.refobjid else o.oprcode::oid end
    join pg_catalog.pg_namespace n on n.oid = f.pronamespace
    where d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass
      and d.objid = any(%(policies)s::oid[])
      and n.nspname <> 'pg_catalog' and not f.proleakproof and f.pronargs > 0
    order by 1, 2
"""


def leaky_function_in_policy(ctx: Context) -> Iterator[Hit]:
    """User functions in the app's policies (restrictive too) that are not LEAKPROOF."""
    applying = {policy.oid: policy for policy in policies(ctx) if policy.applies}
    params = {"policies": list(applying)}
    for policy_oid, function in ctx.conn.execute(_POLICY_FUNCTIONS, params):
        policy = applying[policy_oid]
        yield Hit(
            ctx.table(policy.table).name,
            f"{_on(ctx, policy)} calls {function}, which is not LEAKPROOF: it can see every "
            "row before the owner check filters it (a NOTICE or error message leaks it)",
            f"rewrite {policy.name} with built-in operators only, or, once audited to reveal "
            f"nothing about its arguments, alter function {function} leakproof; (superuser)",
        )
