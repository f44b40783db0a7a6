"""Rule STAT001: an owned table whose user_id has planner statistics the app role can probe.

EXPLAIN's row estimates come from pg_statistic whatever the policies say: bisecting
`explain select 1 from task where user_id < $1` names the most common user ids (ADR 0011).
A user_id with statistics target 0 keeps none from the next ANALYZE on, but ANALYZE does not
remove what it kept before; pg_statistic shows that only to a superuser, so a check run as
another role sees the target alone. Citus's tables are not checked: Citus refuses to change
their statistics target, and the statistics that matter are the shards' (ADR 0011).
"""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit

# Tables in scope with row-level security on (RLS001 reports the others: they leak every row)
# whose user_id may keep statistics (target not 0; PostgreSQL 17 writes the default as NULL),
# or still holds some ({held}: pg_statistic is checked only where it is readable, because the
# executor refuses a query that names it, whatever a CASE around it says).
_PROBED = """
    select t.oid::int, coalesce(a.attstattarget::int, -1) <> 0, {held}
    from unnest(%(tables)s::oid[]) t(oid)
    join pg_catalog.pg_class c on c.oid = t.oid
    join pg_catalog.pg_attribute a
      on a.attrelid = t.oid and a.attname = 'user_id' and a.attnum > 0 and not a.attisdropped
    where c.relrowsecurity
"""
_HELD = """exists (select from pg_catalog.pg_statistic s
                   where s.starelid = t.oid and s.staattnum = a.attnum)"""
_READABLE = "select pg_catalog.has_table_privilege('pg_catalog.pg_statistic', 'SELECT')"
_CITUS_TABLES = """
    select coalesce(array_agg(p.logicalrelid::oid::int), '{}')
    from pg_catalog.pg_dist_partition p where p.logicalrelid = any(%(tables)s::oid[])
"""
_HAS_CITUS = "select exists (select from pg_catalog.pg_extension where extname = 'citus')"


def _citus_tables(ctx: Context) -> set[int]:
    """The tables in scope Citus manages (none without the extension)."""
    if ctx.conn.execute(_HAS_CITUS).fetchone() != (True,):
        return set()
    row = ctx.conn.execute(_CITUS_TABLES, {"tables": ctx.table_oids}).fetchone()
    return set(row[0]) if row else set()


def user_id_statistics(ctx: Context) -> Iterator[Hit]:
    """Owned tables whose user_id statistics EXPLAIN can read back (most common user ids)."""
    citus = _citus_tables(ctx)
    readable = ctx.conn.execute(_READABLE).fetchone() == (True,)
    query = _PROBED.format(held=_HELD if readable else "false")
    for oid, collects, holds in ctx.conn.execute(query, {"tables": ctx.table_oids}):
        if (not collects and not holds) or oid in citus:
            continue
        table = ctx.table(oid).name
        why = (
            "user_id keeps planner statistics"
            if collects
            else "user_id's statistics target is 0, but pg_statistic still holds what an "
            "ANALYZE kept before"
        )
        yield Hit(
            table,
            f"{why}: EXPLAIN's estimates, which policies do not filter, let the app role "
            "bisect `user_id < $1` and read back the most common user ids",
            f"alter table {table} alter column user_id set statistics 0; then remove what "
            f"ANALYZE kept: alter table {table} alter column user_id type text (drop and "
            "re-create the table's policies around it, in one transaction; no rewrite). In a "
            "migration: enable_owner_rls(op, ...) does both by default",
        )
