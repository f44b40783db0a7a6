"""Catalog snapshots of what our schema defines, and scratch databases to build schemas in."""

from typing import Any

import psycopg

from todo_rls.models import metadata

# The tables our migrations create, from the models (tests/test_sql_matches_migrations.py keeps
# models and migrations equal): adding a table to both adds it here, not to a list in each test.
OUR_TABLES = tuple(sorted(table.name for table in metadata.sorted_tables if table.name != "user"))

Snapshot = dict[str, list[tuple[Any, ...]]]

# Our relations: everything in schema public except Better Auth's table and Alembic's own
# (ours, todo_rls_alembic_version, and alembic_version, which an app's own chain may have).
# Indexes are listed on their own, with their definition.
_OUR_RELATIONS = """
  c.relnamespace = 'public'::regnamespace
  and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
  and c.relname not in ('user', 'alembic_version', 'todo_rls_alembic_version')
"""

# An ACL entry's grantee as a name that does not depend on who owns the object: the owner's
# own entry reads "(owner)", so a database built by another role compares equal.
_GRANTEE = """
  case when a.grantee = 0 then 'PUBLIC'
       when a.grantee = {owner} then '(owner)'
       else pg_catalog.pg_get_userbyid(a.grantee)::text end
"""

_QUERIES: dict[str, str] = {
    "relations": f"""
        select c.relname::text, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
               c.relowner = (select oid from pg_catalog.pg_roles where rolname = current_user),
               coalesce(c.reloptions, '{{}}')::text[],
               case when c.relkind in ('v', 'm') then pg_catalog.pg_get_viewdef(c.oid) end
        from pg_catalog.pg_class c
        where {_OUR_RELATIONS}
    """,
    "columns": f"""
        select c.relname::text, a.attname::text,
               pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
               a.attgenerated::text, coalesce(a.attstattarget::int, -1)
        from pg_catalog.pg_class c
        join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0
        left join pg_catalog.pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
        where {_OUR_RELATIONS} and not a.attisdropped
    """,
    "constraints": f"""
        select c.relname::text, k.conname::text, pg_catalog.pg_get_constraintdef(k.oid)
        from pg_catalog.pg_constraint k
        join pg_catalog.pg_class c on c.oid = k.conrelid
        where {_OUR_RELATIONS}
    """,
    "indexes": """
        select tablename::text, indexname::text, indexdef
        from pg_catalog.pg_indexes
        where schemaname = 'public'
          and tablename not in ('user', 'alembic_version', 'todo_rls_alembic_version')
    """,
    "policies": """
        select tablename::text, policyname::text, permissive, roles::text[], cmd, qual,
               with_check
        from pg_catalog.pg_policies
        where schemaname = 'public'
    """,
    "table_grants": f"""
        select c.relname::text, {_GRANTEE.format(owner="c.relowner")}, a.privilege_type,
               a.is_grantable
        from pg_catalog.pg_class c,
             pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
        where {_OUR_RELATIONS}
    """,
    "schema_grants": f"""
        select {_GRANTEE.format(owner="n.nspowner")}, a.privilege_type, a.is_grantable
        from pg_catalog.pg_namespace n,
             pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
        where n.nspname = 'public'
    """,
    "triggers": f"""
        select c.relname::text, t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid),
               t.tgenabled::text
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_class c on c.oid = t.tgrelid
        where {_OUR_RELATIONS} and not t.tgisinternal
    """,
    # Every function in public that no extension installed: ours, and any stray one.
    "functions": f"""
        select p.proname::text, pg_catalog.pg_get_functiondef(p.oid),
               array(select {_GRANTEE.format(owner="p.proowner")} || '=' || a.privilege_type
                     from pg_catalog.aclexplode(
                       coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                     order by 1)
        from pg_catalog.pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and not exists (
            select from pg_catalog.pg_depend d
            where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
              and d.deptype = 'e')
    """,
    "extensions": "select extname::text from pg_catalog.pg_extension",
    "app_role": """
        select rolname::text, rolsuper, rolbypassrls, rolcanlogin, rolinherit, rolcreatedb,
               rolcreaterole, rolreplication
        from pg_catalog.pg_roles
        where rolname = 'todo_app'
    """,
}


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """Our schema as sorted rows per catalog topic; equal snapshots mean equal schemas."""
    result: Snapshot = {}
    for topic, query in _QUERIES.items():
        rows = conn.execute(query).fetchall()
        # repr as the sort key: rows mix None with str, which do not compare.
        result[topic] = sorted((tuple(row) for row in rows), key=repr)
    return result


def query_one(conn: psycopg.Connection[Any], query: str, *params: object) -> Any:
    """The single value a one-row, one-column query returns."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]
