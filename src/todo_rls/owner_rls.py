"""One call in an Alembic migration protects a new owned table the way the core tables are.

``enable_owner_rls(op, "note")`` emits: a precondition check on the table's columns (and on
todo-rls's verifier), ENABLE and FORCE row-level security, one policy per command
``TO todo_app`` keyed on the verified identity (OWNER_MATCHES), SELECT/INSERT/UPDATE/DELETE
grants (nothing else), the ``updated_at`` trigger, and an index leading with ``user_id`` (every
policy filters on it): ``ix_<table>_user_id``, unless one already leads with it; and no planner
statistics for ``user_id`` (EXPLAIN's estimates would name the most common user ids, ADR 0011).
``disable_owner_rls(op, "note")`` with the same arguments drops exactly those for the downgrade.
``refresh_owner_policies(op, "note")`` moves a table protected before the verified identity
(policies keyed on the forgeable app.user_id setting) to it.

Migrations call these functions, so the SQL they emit for given arguments changes only with a
decision recorded in an ADR, and tests/test_rls_guard.py pins it word for word. It changed once:
revision 5b7e9c1d2a40 (ADR 0008) replaced the setting with the verified identity; revision
02e680687f90 carries, frozen, what was emitted before.
"""

import re
from typing import Protocol

from sqlalchemy.dialects.postgresql.base import PGDialect

from todo_rls.errors import TodoRlsError

# The verifier (revision 5b7e9c1d2a40): the user id of a context the database verified; NULL
# without a context (no row matches), an error for a forged one. The sub-select makes it an
# InitPlan: the function runs once per statement, whatever the plan.
IDENTITY_FUNCTION = "todo_rls.current_user_id()"
OWNER_MATCHES = f"user_id = (select {IDENTITY_FUNCTION})"
# The same without the sub-select, which Citus refuses in policies on distributed tables.
OWNER_MATCHES_BARE = f"user_id = {IDENTITY_FUNCTION}"
# Before revision 5b7e9c1d2a40: any SQL the app runs can set app.user_id to anyone.
FORGEABLE_OWNER_MATCHES = (
    "user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), ''))"
)
COMMANDS = ("select", "insert", "update", "delete")

# PostgreSQL truncates names to 63 bytes; the longest derived name is "<table>_set_updated_at",
# so a longer table name would give objects whose names silently differ from the ones we drop.
_MAX_NAME_BYTES = 63
_TRIGGER_SUFFIX = "_set_updated_at"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# PostgreSQL's quoting rules, as the core revision applied them: quoted only where needed.
_quote = PGDialect().identifier_preparer.quote  # type: ignore[no-untyped-call]


class OwnerRlsArgumentError(TodoRlsError, ValueError):
    """enable_owner_rls / disable_owner_rls got a name it cannot safely use."""


class Operations(Protocol):
    """What the helpers need of Alembic's ``op``: it executes SQL text."""

    def execute(self, sqltext: str) -> None: ...


def _check_name(value: object, what: str, suffix: str = "") -> str:
    if not isinstance(value, str):
        raise OwnerRlsArgumentError(f"{what} must be a str, not {type(value).__name__}")
    if not _IDENTIFIER.fullmatch(value):
        raise OwnerRlsArgumentError(
            f"{what} {value!r:.80} is not a plain SQL identifier: use letters, digits and"
            " underscores, not starting with a digit (no schema prefix: pass schema=...)"
        )
    if len(value + suffix) > _MAX_NAME_BYTES:
        raise OwnerRlsArgumentError(
            f"{what} {value!r} is {len(value)} characters; at most"
            f" {_MAX_NAME_BYTES - len(suffix)} are allowed, so that {value + suffix!r:.90}"
            f" fits PostgreSQL's {_MAX_NAME_BYTES}-byte names"
        )
    return value


def _check_flag(value: object, what: str = "updated_at") -> bool:
    if not isinstance(value, bool):
        raise OwnerRlsArgumentError(f"{what} must be True or False, not {value!r:.80}")
    return value


def _literal(text: str) -> str:
    # Only ever given validated identifiers, which hold no quote; doubling keeps it safe anyway.
    return "'" + text.replace("'", "''") + "'"


def _precondition(qualified: str, updated_at: bool) -> str:
    """A DO block that stops the migration, naming the fix, if the table cannot be protected."""
    columns = "array['user_id', 'updated_at']" if updated_at else "array['user_id']"
    return f"""do $$
declare
  missing text;
begin
  if pg_catalog.to_regclass({_literal(qualified)}) is null then
    raise exception 'table % does not exist', {_literal(qualified)}
      using hint = 'Create the table before calling enable_owner_rls in the same migration.';
  end if;
  if pg_catalog.to_regprocedure('todo_rls.current_user_id()') is null then
    raise exception 'todo-rls''s verifier todo_rls.current_user_id() does not exist'
      using hint = 'Apply todo-rls''s migrations before your own: todo-rls migrate.';
  end if;
  select pg_catalog.string_agg(c.name, ', ') into missing
  from pg_catalog.unnest({columns}) as c(name)
  where not exists (
    select from pg_catalog.pg_attribute a
    where a.attrelid = {_literal(qualified)}::regclass and a.attname = c.name
      and not a.attisdropped
      and a.atttypid = case c.name when 'user_id' then 'text'::regtype
                                   else 'timestamptz'::regtype end);
  if missing is not null then
    raise exception 'table % lacks column(s) of the expected type: %', {_literal(qualified)},
      missing
      using hint = 'An owned table needs user_id text (and updated_at timestamptz unless '
                   'updated_at=False is passed).';
  end if;
  if exists (
    select from pg_catalog.pg_attribute a
    join pg_catalog.pg_collation c on c.oid = a.attcollation
    where a.attrelid = {_literal(qualified)}::regclass and a.attname = 'user_id'
      and not c.collisdeterministic) then
    -- Under a case-insensitive collation 'ALICE' = 'alice': the policies would match other ids.
    raise exception 'user_id of % has a nondeterministic collation', {_literal(qualified)}
      using hint = 'Give it the default collation first: alter table ' || {_literal(qualified)}
                   || ' alter column user_id type text collate "default";';
  end if;
end
$$"""  # noqa: S608 (names are validated identifiers, quoted; no value from a caller)


# Marks the index enable_owner_rls created, so that disable_owner_rls drops that one and never
# an index of the same name the table had before.
_INDEX_COMMENT = "created by todo_rls.owner_rls.enable_owner_rls"


def _owner_index(table: str, schema: str) -> str:
    """The quoted, schema-qualified name of the index index=True creates."""
    return f"{_quote(schema)}.{_quote(f'ix_{table}_user_id')}"


def _create_owner_index(qualified_table: str, table: str, schema: str) -> str:
    """A DO block: create ix_<table>_user_id unless a valid, non-partial index leads with
    user_id (a primary key or unique constraint on it counts)."""
    index = _owner_index(table, schema)
    return f"""do $$
begin
  if not exists (
    select from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a
      on a.attrelid = i.indrelid and a.attnum = i.indkey[0] and a.attname = 'user_id'
    where i.indrelid = {_literal(qualified_table)}::regclass
      and i.indpred is null and i.indisvalid) then
    -- Every policy filters on user_id: without an index leading with it, each query of the
    -- table can fall back to a sequential scan.
    create index {_quote(f"ix_{table}_user_id")} on {qualified_table} (user_id);
    comment on index {index} is {_literal(_INDEX_COMMENT)};
  end if;
end
$$"""


def _drop_owner_index(table: str, schema: str) -> str:
    """A DO block: drop ix_<table>_user_id if enable_owner_rls created it (its comment says)."""
    index = _owner_index(table, schema)
    return f"""do $$
begin
  if pg_catalog.obj_description(pg_catalog.to_regclass({_literal(index)}), 'pg_class')
     = {_literal(_INDEX_COMMENT)} then
    drop index {index};
  end if;
end
$$"""


def _drop_user_id_statistics(qualified: str) -> list[str]:
    """Statistics target 0 for user_id, and away with what ANALYZE kept before (ADR 0011)."""
    # ANALYZE keeps a column's old statistics when its target becomes 0; retyping the column
    # to its own type and collation removes them without a rewrite. The owner sees them in
    # pg_stats until the table's row-level security is forced, which comes after this.
    return [
        f"alter table {qualified} alter column user_id set statistics 0",
        f"""do $$
begin
  if exists (
    select from pg_catalog.pg_stats s
    join pg_catalog.pg_namespace n on n.nspname = s.schemaname
    join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = s.tablename
    where c.oid = {_literal(qualified)}::regclass and s.attname = 'user_id') then
    execute (
      select pg_catalog.format('alter table %s alter column user_id type text collate %I.%I',
                               {_literal(qualified)}, n.nspname, c.collname)
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_collation c on c.oid = a.attcollation
      join pg_catalog.pg_namespace n on n.oid = c.collnamespace
      where a.attrelid = {_literal(qualified)}::regclass and a.attname = 'user_id');
  end if;
end
$$""",  # noqa: S608 (a validated, quoted identifier; no value from a caller)
    ]


def _names(table: object, schema: object, app_role: object) -> tuple[str, str, str]:
    """The checked table name, its quoted schema-qualified name and the quoted role."""
    table = _check_name(table, "table", _TRIGGER_SUFFIX)
    schema = _check_name(schema, "schema")
    role = _check_name(app_role, "app_role")
    return table, f"{_quote(schema)}.{_quote(table)}", _quote(role)


def enable_owner_rls(
    op: Operations,
    table: str,
    *,
    schema: str = "public",
    app_role: str = "todo_app",
    updated_at: bool = True,
    index: bool = True,
    user_id_statistics: bool = False,
) -> None:
    """Protect schema.table like the core tables: forced RLS, four policies, grants, trigger,
    and an index leading with user_id unless one exists (index=False: none; `todo-rls check`
    IDX001 then flags the table). user_id keeps no planner statistics unless
    user_id_statistics=True (`todo-rls check` STAT001 then flags the table)."""
    table, name, role = _names(table, schema, app_role)
    with_trigger = _check_flag(updated_at)
    with_index = _check_flag(index, "index")
    with_statistics = _check_flag(user_id_statistics, "user_id_statistics")
    op.execute(_precondition(name, with_trigger))
    if not with_statistics:
        for statement in _drop_user_id_statistics(name):
            op.execute(statement)
    op.execute(f"alter table {name} enable row level security")
    op.execute(f"alter table {name} force row level security")
    _create_policies(op, table, name, role)
    op.execute(f"grant select, insert, update, delete on {name} to {role}")
    if with_trigger:
        op.execute(
            f"create trigger {_quote(table + _TRIGGER_SUFFIX)} before update on {name}"
            " for each row execute function public.todo_rls_set_updated_at()"
        )
    if with_index:
        op.execute(_create_owner_index(name, table, str(schema)))


def _create_policies(op: Operations, table: str, name: str, role: str) -> None:
    clauses = {
        "select": f"using ({OWNER_MATCHES})",
        "insert": f"with check ({OWNER_MATCHES})",
        "update": f"using ({OWNER_MATCHES}) with check ({OWNER_MATCHES})",
        "delete": f"using ({OWNER_MATCHES})",
    }
    for command in COMMANDS:
        op.execute(
            f"create policy {_quote(f'{table}_{command}')} on {name} for {command} to {role}"
            f" {clauses[command]}"
        )


def refresh_owner_policies(
    op: Operations, table: str, *, schema: str = "public", app_role: str = "todo_app"
) -> None:
    """Re-create the four policies enable_owner_rls made, keyed on the current OWNER_MATCHES.

    For a table protected by an enable_owner_rls of before the verified identity (todo-rls
    check reports it as IDN001): call it in a new revision of your own chain.
    """
    table, name, role = _names(table, schema, app_role)
    for command in reversed(COMMANDS):
        op.execute(f"drop policy {_quote(f'{table}_{command}')} on {name}")
    _create_policies(op, table, name, role)


def disable_owner_rls(
    op: Operations,
    table: str,
    *,
    schema: str = "public",
    app_role: str = "todo_app",
    updated_at: bool = True,
    index: bool = True,
    user_id_statistics: bool = False,
) -> None:
    """Undo enable_owner_rls with the same arguments: drop exactly what it created (user_id's
    statistics target back to the default; the next ANALYZE fills it)."""
    table, name, role = _names(table, schema, app_role)
    with_trigger = _check_flag(updated_at)
    with_statistics = _check_flag(user_id_statistics, "user_id_statistics")
    if _check_flag(index, "index"):
        op.execute(_drop_owner_index(table, str(schema)))
    if with_trigger:
        op.execute(f"drop trigger {_quote(table + _TRIGGER_SUFFIX)} on {name}")
    op.execute(f"revoke select, insert, update, delete on {name} from {role}")
    for command in reversed(COMMANDS):
        op.execute(f"drop policy {_quote(f'{table}_{command}')} on {name}")
    op.execute(f"alter table {name} no force row level security")
    op.execute(f"alter table {name} disable row level security")
    if not with_statistics:
        op.execute(f"alter table {name} alter column user_id set statistics -1")
