"""Rules CIT001-CIT004, and what Citus's own objects are exempt from, on a Citus coordinator.

On a database without the citus extension every function here finds nothing. The shards live
on the workers, where the policies are enforced; run_command_on_placements reads each
placement's catalog over the coordinator's connections to the workers, as the checking role
(any login may, measured on Citus 13.2.2), inside the check's read-only transaction.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit

_HAS_CITUS = "select exists (select from pg_catalog.pg_extension where extname = 'citus')"

# The Citus tables among the tables in scope: type, and the distribution column if hashed.
_CITUS_TABLES = """
    select p.logicalrelid::oid::int,
           case when p.partmethod = 'h' then 'distributed'
                when p.repmodel = 't' then 'reference' else 'local' end,
           pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
    from pg_catalog.pg_dist_partition p
    where p.logicalrelid = any(%(tables)s::oid[])
    order by 1
"""

# A relation's row-level security and policies as JSON; {relation} is a regclass expression.
# Policy names, commands, roles and clause texts are the same on the shards as on the table.
_STATE = """
select pg_catalog.json_build_object(
  'rls', c.relrowsecurity,
  'force', c.relforcerowsecurity,
  'policies', coalesce((
    select pg_catalog.json_agg(pg_catalog.json_build_array(
             p.polname::text, p.polcmd::text, p.polpermissive,
             array(select case when r.oid = 0 then 'public'
                               else pg_catalog.pg_get_userbyid(r.oid)::text end
                   from pg_catalog.unnest(p.polroles) r(oid) order by 1),
             pg_catalog.pg_get_expr(p.polqual, p.polrelid),
             pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
           order by p.polname)
    from pg_catalog.pg_policy p where p.polrelid = c.oid), '[]'))::text
from pg_catalog.pg_class c where c.oid = {relation}
"""
# run_command_on_placements puts each shard's name where its command says %s.
_ON_PLACEMENTS = """
    select nodename::text, nodeport, shardid, success, result
    from pg_catalog.run_command_on_placements(%(table)s::oid::regclass, %(command)s)
    order by shardid, nodename, nodeport
"""
_SHARD_STATE = _STATE.format(relation="'%1$s'::pg_catalog.regclass")
_TABLE_STATE = _STATE.format(relation="%(table)s::oid")

# Relations that belong to the citus extension (its views public.citus_tables and
# public.citus_schemas are readable by PUBLIC without security_invoker): Citus's metadata,
# names and sizes of tables, not rows of the owned tables.
# Run without parameters, so its % signs are format()'s own.
_CITUS_RELATIONS = """
    select pg_catalog.format('%I.%I', n.nspname, c.relname)
    from pg_catalog.pg_depend d
    join pg_catalog.pg_extension e on e.oid = d.refobjid
    join pg_catalog.pg_class c on c.oid = d.objid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      and d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
      and d.deptype = 'e' and e.extname = 'citus'
"""


@dataclass(frozen=True)
class CitusTable:
    oid: int
    name: str
    kind: str  # distributed, reference or local (a Citus local table on the coordinator)
    column: str | None  # the distribution column of a distributed table


def has_citus(ctx: Context) -> bool:
    """Whether the checked database has the citus extension (a Citus coordinator)."""
    row = ctx.conn.execute(_HAS_CITUS).fetchone()
    return bool(row and row[0])


def citus_tables(ctx: Context) -> list[CitusTable]:
    """The tables in scope that Citus manages; none without the extension."""
    if not has_citus(ctx):
        return []
    rows = ctx.conn.execute(_CITUS_TABLES, {"tables": ctx.table_oids}).fetchall()
    return [CitusTable(oid, ctx.table(oid).name, kind, column) for oid, kind, column in rows]


def exemptions(ctx: Context) -> set[tuple[str, str]]:
    """(rule id, object) pairs other rules must not report on a Citus coordinator.

    Citus's own relations (VIEW001, READ001), and POL005 on Citus tables: Citus refuses a
    sub-select in their policies ("Subqueries are not supported in policies on distributed
    tables"), so the per-row form is the only one there, and the fix POL005 prints would fail.
    """
    if not has_citus(ctx):
        return set()
    exempt = {
        (rule, relation)
        for (relation,) in ctx.conn.execute(_CITUS_RELATIONS)
        for rule in ("VIEW001", "READ001")
    }
    exempt |= {("POL005", table.name) for table in citus_tables(ctx)}
    return exempt


def _state(text: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(text)
    state["policies"] = [tuple(map(_hashable, policy)) for policy in state["policies"]]
    return state


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _placements(ctx: Context, table: CitusTable) -> list[tuple[str, dict[str, Any] | str]]:
    """(placement, its state or the error reading it) for every placement of table. Read once
    per run (CIT001 and CIT002 both look): each read opens a connection to every placement."""
    key = ("placements", table.oid)
    if key not in ctx.memo:
        params = {"table": table.oid, "command": _SHARD_STATE}
        ctx.memo[key] = [
            (f"shard {shard} on {host}:{port}", _state(result) if success else str(result))
            for host, port, shard, success, result in ctx.conn.execute(_ON_PLACEMENTS, params)
        ]
    placements: list[tuple[str, dict[str, Any] | str]] = ctx.memo[key]
    return placements


def _table_state(ctx: Context, table: CitusTable) -> dict[str, Any]:
    row = ctx.conn.execute(_TABLE_STATE, {"table": table.oid}).fetchone()
    assert row is not None, table.name
    return _state(row[0])


def _unreadable(table: CitusTable, where: str, error: str) -> Hit:
    return Hit(
        table.name,
        f"{where}: cannot read the placement's row-level security ({error})",
        "check that the node answers and that this role can connect to it "
        "(run_command_on_placements connects as the checking role)",
    )


def placement_not_forced(ctx: Context) -> Iterator[Hit]:
    """Shard placements whose row-level security is weaker than their table's."""
    for table in citus_tables(ctx):
        expected = _table_state(ctx, table)
        for where, state in _placements(ctx, table):
            if isinstance(state, str):
                yield _unreadable(table, where, state)
            elif (expected["rls"] and not state["rls"]) or (
                expected["force"] and not state["force"]
            ):
                yield Hit(
                    table.name,
                    f"{where}: row-level security is "
                    f"{'enabled but not forced' if state['rls'] else 'off'} on the placement, "
                    f"which the workers query: its owner (or every role) reads every row",
                    f"select run_command_on_placements('{table.name}', "
                    "$$alter table %s enable row level security, force row level security$$);",
                )


def placement_policies_differ(ctx: Context) -> Iterator[Hit]:
    """Shard placements whose policies are not exactly their table's."""
    for table in citus_tables(ctx):
        expected = set(_table_state(ctx, table)["policies"])
        for where, state in _placements(ctx, table):
            if isinstance(state, str):
                continue  # CIT001 reports it
            found = set(state["policies"])
            if found == expected:
                continue
            missing = sorted(policy[0] for policy in expected - found)
            extra = sorted(policy[0] for policy in found - expected)
            yield Hit(
                table.name,
                f"{where}: the placement's policies differ from the table's"
                f" (missing or changed: {', '.join(missing) or 'none'};"
                f" extra or changed: {', '.join(extra) or 'none'}): the workers enforce the"
                " placement's",
                f"drop and re-create the policies on {table.name} through the coordinator "
                "(Citus propagates CREATE/ALTER/DROP POLICY to every placement); never change "
                "a shard directly",
            )


def distributed_off_owner(ctx: Context) -> Iterator[Hit]:
    """Owned tables (with user_id) distributed on another column."""
    for table in citus_tables(ctx):
        if table.kind == "distributed" and table.column != "user_id":
            yield Hit(
                table.name,
                f"{table.name} is distributed on {table.column}, not user_id: one user's rows "
                "spread over every shard, each query fans out, and it cannot share a colocation "
                "group (nor composite foreign keys) with the tables distributed by user_id",
                f"select undistribute_table('{table.name}'); then "
                f"select create_distributed_table('{table.name}', 'user_id', "
                "colocate_with => '<a table distributed by user_id>');",
            )


# On a worker, in this database: the track_activities each login's sessions get, the most
# specific default first (login in this database, login everywhere, everyone in this
# database), else the server's, as this very session sees it unless its own role overrides it.
# One row of JSON ({login: value}): run_command_on_workers returns one value per node.
_TRACK_ACTIVITIES = """
select coalesce(pg_catalog.json_object_agg(l.name, coalesce(
  (select pg_catalog.split_part(c.setting, '=', 2)
   from pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c(setting)
   where pg_catalog.split_part(c.setting, '=', 1) = 'track_activities'
     and ((s.setrole = r.oid and s.setdatabase = d.oid) or (s.setrole = r.oid and s.setdatabase = 0)
          or (s.setrole = 0 and s.setdatabase = d.oid))
   order by s.setrole = 0, s.setdatabase = 0 limit 1),
  (select p.setting from pg_catalog.pg_settings p
   where p.name = 'track_activities' and p.source not in ('user', 'database user')),
  'on')), '{{}}')::text
from pg_catalog.unnest({logins}::text[]) l(name)
left join pg_catalog.pg_roles r on r.rolname = l.name
cross join (select oid from pg_catalog.pg_database
            where datname = pg_catalog.current_database()) d
"""
_ON_WORKERS = """
    select nodename::text, nodeport, success, result
    from pg_catalog.run_command_on_workers(%(command)s) order by 1, 2
"""


def worker_activity_visible(ctx: Context) -> Iterator[Hit]:
    """Login roles whose query texts the workers show to the login's other sessions."""
    logins = sorted(role.name for role in ctx.login_roles)
    if not logins or not citus_tables(ctx):
        return
    command = sql.SQL(_TRACK_ACTIVITIES).format(logins=sql.Literal(logins)).as_string(ctx.conn)
    exposed: dict[str, list[str]] = {}
    for host, port, success, result in ctx.conn.execute(_ON_WORKERS, {"command": command}):
        values: dict[str, str] = json.loads(result) if success else {}
        for login in logins:
            if values.get(login, "on") != "off":
                exposed.setdefault(login, []).append(f"{host}:{port}")
    database = ctx.conn.info.dbname
    for login, workers in exposed.items():
        yield Hit(
            f"role {login}",
            f"on the workers ({', '.join(workers)}) track_activities is on for {login}: "
            "Citus sends each transaction's scope there as literals (set local app.user_id = "
            "'...', app.user_sig = '...'), and every other session of the same login can read "
            "them in pg_stat_activity, so SQL injected into one request can take another "
            "request's signed context and act as that user until it expires",
            f'alter database "{database}" set track_activities = off;  -- as a superuser, on '
            "the coordinator (Citus propagates it to every node); or in each worker's "
            "postgresql.conf",
        )
