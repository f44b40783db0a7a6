"""The migrated database the tests that change no schema or role share, and its fingerprint.

Sharing one database (per xdist worker) instead of cloning the template per test is what makes
the suite fast; it is safe only while no test changes what the others rely on. So the catalog
is fingerprinted once, and again after every test that ran on it: a test that changed a table,
policy, function, grant, installed key or database setting fails, naming the change, and the
next test gets a fresh copy. Rows are not part of it: tests isolate by fresh random user ids.
"""

import secrets
from typing import Any

import psycopg
from psycopg import sql

from todo_rls.testing.database import Server

# Everything a test could change that another test would feel, as one line per object, from
# every schema but the system's: relations (kind, RLS flags, owner, grants, options), columns
# (with their statistics target),
# constraints, indexes, policies, functions (body, settings, grants, SECURITY DEFINER),
# triggers, schemas and their grants, the installed signing keys, database-level settings,
# and what todo_app is and belongs to.
_FINGERPRINT = """
with ns as (
  select oid, nspname from pg_catalog.pg_namespace
  where nspname not in ('pg_catalog', 'information_schema')
    and nspname !~ '^pg_(toast|temp_|toast_temp_)'
)
select coalesce(pg_catalog.string_agg(line, e'\\n' order by line), '') from (
  select pg_catalog.concat_ws(' ', 'relation', c.oid::regclass, c.relkind, c.relrowsecurity,
         c.relforcerowsecurity, c.relowner::regrole, c.relacl, c.reloptions)
  from pg_catalog.pg_class c join ns on ns.oid = c.relnamespace
  union all
  select pg_catalog.concat_ws(' ', 'column', a.attrelid::regclass, a.attname,
         pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attacl,
         pg_catalog.pg_get_expr(d.adbin, d.adrelid), 'statistics', a.attstattarget,
         -- statistics a column with target 0 still keeps (ADR 0011); autovacuum adds none
         case when a.attstattarget = 0 then exists (
           select from pg_catalog.pg_statistic t
           where t.starelid = a.attrelid and t.staattnum = a.attnum) end)
  from pg_catalog.pg_attribute a
  join pg_catalog.pg_class c on c.oid = a.attrelid join ns on ns.oid = c.relnamespace
  left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
  where a.attnum > 0 and not a.attisdropped
  union all
  select pg_catalog.concat_ws(' ', 'constraint', k.conrelid::regclass, k.conname,
         pg_catalog.pg_get_constraintdef(k.oid))
  from pg_catalog.pg_constraint k join ns on ns.oid = k.connamespace
  union all
  select pg_catalog.concat_ws(' ', 'index', pg_catalog.pg_get_indexdef(i.indexrelid))
  from pg_catalog.pg_index i join pg_catalog.pg_class c on c.oid = i.indexrelid
  join ns on ns.oid = c.relnamespace
  union all
  select pg_catalog.concat_ws(' ', 'policy', p.schemaname, p.tablename, p.policyname,
         p.permissive, p.roles, p.cmd, p.qual, p.with_check)
  from pg_catalog.pg_policies p
  union all
  select pg_catalog.concat_ws(' ', 'function', p.oid::regprocedure, p.proowner::regrole,
         p.prosecdef, p.provolatile, p.proleakproof, p.proconfig, p.proacl,
         pg_catalog.md5(p.prosrc))
  from pg_catalog.pg_proc p join ns on ns.oid = p.pronamespace
  union all
  select pg_catalog.concat_ws(' ', 'trigger', t.tgrelid::regclass, t.tgname, t.tgenabled,
         pg_catalog.pg_get_triggerdef(t.oid))
  from pg_catalog.pg_trigger t where not t.tgisinternal
    and t.tgrelid in (select c.oid from pg_catalog.pg_class c join ns on ns.oid = c.relnamespace)
  union all
  select pg_catalog.concat_ws(' ', 'schema', ns.nspname, n.nspowner::regrole, n.nspacl)
  from pg_catalog.pg_namespace n join ns on ns.oid = n.oid
  union all
  select pg_catalog.concat_ws(' ', 'setting', s.setrole, s.setconfig)
  from pg_catalog.pg_db_role_setting s
  where s.setdatabase = (select oid from pg_catalog.pg_database
                         where datname = pg_catalog.current_database())
  union all
  select pg_catalog.concat_ws(' ', 'todo_app', r.rolsuper, r.rolbypassrls, r.rolcreaterole,
         r.rolinherit, r.rolcanlogin, (select pg_catalog.array_agg(m.roleid::regrole order by 1)
                                       from pg_catalog.pg_auth_members m
                                       where m.member = r.oid))
  from pg_catalog.pg_roles r where r.rolname = 'todo_app'
) lines(line)
"""
# The installed signing keys, which verify every scoped transaction; read only when the table
# exists (it does after the migrations; a test that dropped it shows in the catalog lines).
_KEYS = """
select coalesce(pg_catalog.string_agg(k::text, e'\\n' order by k::text), '')
from todo_rls.signing_key k
"""


def fingerprint(conn: psycopg.Connection[Any]) -> list[str]:
    """The shared-state lines of conn's database (see _FINGERPRINT), sorted."""
    row = conn.execute(_FINGERPRINT).fetchone()
    lines = str(row[0] if row else "").splitlines()
    if conn.execute("select pg_catalog.to_regclass('todo_rls.signing_key')").fetchone() != (None,):
        keys = conn.execute(_KEYS).fetchone()
        lines += [f"signing key {key}" for key in str(keys[0] if keys else "").splitlines()]
    return lines


class SharedDatabase:
    """A copy of the migrated template that tests share, re-made after one changes it.

    The fingerprint is read over one connection kept for it: a new backend reads the catalog
    into its caches first, which made each check about 20 ms instead of 5 (measured here).
    """

    def __init__(self, server: Server, template: str) -> None:
        self.server, self.template = server, template
        self.name = self._create()
        self._conn = self._connect()
        self.expected = fingerprint(self._conn)

    def _create(self) -> str:
        name = f"{self.template}_shared_{secrets.token_hex(3)}"
        with self.server.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        return name

    def _connect(self) -> psycopg.Connection[Any]:
        return self.server.connect(self.name, autocommit=True)

    def drop(self) -> None:
        """Drop the current copy (force: a connection a failed test left open must not keep
        it alive)."""
        self._conn.close()
        with self.server.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(self.name))
            )

    def _fingerprint(self) -> list[str]:
        try:
            return fingerprint(self._conn)
        except psycopg.OperationalError:  # a test ended every backend of the database
            self._conn.close()
            self._conn = self._connect()
            return fingerprint(self._conn)

    def check_unchanged(self, test: str) -> None:
        """Raise AssertionError naming what test changed, after replacing the copy, if the
        catalog differs from the migrated template's."""
        found = self._fingerprint()
        if found == self.expected:
            return
        gone = sorted(set(self.expected) - set(found))
        new = sorted(set(found) - set(self.expected))
        self.drop()
        self.name = self._create()
        self._conn = self._connect()
        changes = [f"  - {line}" for line in gone] + [f"  + {line}" for line in new]
        raise AssertionError(
            f"{test} changed the shared test database; give it its own copy with"
            " @pytest.mark.own_database, or undo the change:\n" + "\n".join(changes)
        )
