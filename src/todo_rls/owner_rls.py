"""One call in an Alembic migration protects a new owned table the way the core tables are.

``enable_owner_rls(op, "note")`` emits: a precondition check on the table's columns, ENABLE and
FORCE row-level security, one policy per command ``TO todo_app`` keyed on the core revision's
exact predicate, SELECT/INSERT/UPDATE/DELETE grants (nothing else), and the ``updated_at``
trigger. ``disable_owner_rls(op, "note")`` drops exactly those for the downgrade.

Migrations are frozen history and they call this function, so the SQL it emits for given
arguments must never change: tests/test_rls_guard.py pins it word for word. Change the
protection in a new function (and a new revision), not here.
"""

import re
from typing import Protocol

from sqlalchemy.dialects.postgresql.base import PGDialect

from todo_rls.errors import TodoRlsError

# Fail closed: unset (NULL) and reset ('') both match no row. The sub-select is an InitPlan,
# evaluated once per statement. The same text as the core revision 3f9c2a7d1b04.
CURRENT_USER_ID = "(select nullif(pg_catalog.current_setting('app.user_id', true), ''))"
OWNER_MATCHES = f"user_id = {CURRENT_USER_ID}"
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


def _check_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise OwnerRlsArgumentError(f"updated_at must be True or False, not {value!r:.80}")
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
) -> None:
    """Protect schema.table like the core tables: forced RLS, four policies, grants, trigger."""
    table, name, role = _names(table, schema, app_role)
    with_trigger = _check_flag(updated_at)
    op.execute(_precondition(name, with_trigger))
    op.execute(f"alter table {name} enable row level security")
    op.execute(f"alter table {name} force row level security")
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
    op.execute(f"grant select, insert, update, delete on {name} to {role}")
    if with_trigger:
        op.execute(
            f"create trigger {_quote(table + _TRIGGER_SUFFIX)} before update on {name}"
            " for each row execute function public.todo_rls_set_updated_at()"
        )


def disable_owner_rls(
    op: Operations,
    table: str,
    *,
    schema: str = "public",
    app_role: str = "todo_app",
    updated_at: bool = True,
) -> None:
    """Undo enable_owner_rls with the same arguments: drop exactly what it created."""
    table, name, role = _names(table, schema, app_role)
    if _check_flag(updated_at):
        op.execute(f"drop trigger {_quote(table + _TRIGGER_SUFFIX)} on {name}")
    op.execute(f"revoke select, insert, update, delete on {name} from {role}")
    for command in reversed(COMMANDS):
        op.execute(f"drop policy {_quote(f'{table}_{command}')} on {name}")
    op.execute(f"alter table {name} no force row level security")
    op.execute(f"alter table {name} disable row level security")
