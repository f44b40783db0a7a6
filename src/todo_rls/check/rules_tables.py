"""Rules RLS001 and RLS002: every table in scope has row-level security enabled and forced."""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit
from todo_rls.check.predicate import CANONICAL_SQL


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
