"""Rules RLS001, RLS002 and IDX001: every table in scope has row-level security enabled and
forced, and every owned one an index its policies can use."""

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


# Tables in scope with a user_id column and no valid, non-partial index whose first column is
# user_id (a primary key or unique constraint on it counts).
_UNINDEXED = """
    select t.oid::int from unnest(%(tables)s::oid[]) t(oid)
    where exists (select from pg_catalog.pg_attribute a
                  where a.attrelid = t.oid and a.attname = 'user_id' and a.attnum > 0
                    and not a.attisdropped)
      and not exists (select from pg_catalog.pg_index i
                      join pg_catalog.pg_attribute a
                        on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                      where i.indrelid = t.oid and a.attname = 'user_id'
                        and i.indpred is null and i.indisvalid)
"""


def owner_without_index(ctx: Context) -> Iterator[Hit]:
    """Owned tables no index leads with user_id on: every policy filters on it."""
    for (oid,) in ctx.conn.execute(_UNINDEXED, {"tables": ctx.table_oids}):
        table = ctx.table(oid).name
        yield Hit(
            table,
            "no index leads with user_id: every policy filters on it, so any query of the table "
            "can fall back to a sequential scan of every user's rows",
            f"create index on {table} (user_id); (in a migration: enable_owner_rls(op, ..., "
            "index=True))",
        )
