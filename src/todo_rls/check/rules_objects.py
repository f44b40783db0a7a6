"""Rules FK001, FN001 and VIEW001: foreign keys, functions and views that get around RLS."""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit

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
            f"alter view {view} set (security_invoker = true);"
            if ctx.has_security_invoker
            else f"drop view {view}; (PostgreSQL 14 has no security_invoker: query the table)",
        )
