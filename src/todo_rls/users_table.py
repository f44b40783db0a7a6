"""The table of users that todo-rls's foreign keys reference: Better Auth's public."user" by
default, or the one TODO_RLS_USERS_TABLE names (Neon Auth keeps its users in schema neon_auth).

migrations/env.py reads the setting once per run and hands it to every revision through the
migration context; revisions ask for it with users_table_of(op). Whatever the table, the foreign
keys keep their names (fk_task_user_id_user, ...): errors.py and the data-access layer rely on
them.
"""

import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.dialects.postgresql.base import PGDialect

from todo_rls.errors import TodoRlsError

USERS_TABLE_ENV = "TODO_RLS_USERS_TABLE"
# The key under which env.py puts the table into the migration context's options.
CONTEXT_OPTION = "todo_rls_users_table"

# PostgreSQL's quoting rules: quoted only where needed ("user" is a reserved word).
_quote = PGDialect().identifier_preparer.quote  # type: ignore[no-untyped-call]
_PART = re.compile(r'"([^"\x00]+)"|([A-Za-z_][A-Za-z0-9_$]*)')


class UsersTableError(TodoRlsError, ValueError):
    """TODO_RLS_USERS_TABLE does not name a table the way todo-rls can use it."""


@dataclass(frozen=True)
class UsersTable:
    """A schema-qualified table name, as PostgreSQL stores it (unquoted names folded to lower
    case)."""

    schema: str
    name: str

    @property
    def sql(self) -> str:
        """The name for SQL text: public."user", neon_auth.users_sync."""
        return f"{_quote(self.schema)}.{_quote(self.name)}"

    @property
    def literal(self) -> str:
        """The name as an SQL string literal, for to_regclass('...') and messages."""
        return "'" + self.sql.replace("'", "''") + "'"

    @property
    def is_default(self) -> bool:
        return self == DEFAULT


# Better Auth's users table (RLS-FACTS), the one the revisions referenced before this setting.
DEFAULT = UsersTable("public", "user")


def parse(text: str) -> UsersTable:
    """A UsersTable from `schema.table` or `table` (schema public), each part a plain name or a
    double-quoted one: neon_auth.users_sync, neon_auth."user", "user"."""
    parts, rest = [], text.strip()
    while True:
        match = _PART.match(rest)
        if match is None:
            break
        quoted, plain = match.groups()
        parts.append(quoted if quoted is not None else plain.lower())
        rest = rest[match.end() :]
        if not rest.startswith(".") or len(parts) == 2:
            break
        rest = rest[1:]
    if rest or not 1 <= len(parts) <= 2:
        raise UsersTableError(
            f"{USERS_TABLE_ENV}={text!r:.80} is not a table name: use schema.table or table, "
            'each part plain or double-quoted, e.g. neon_auth."user" or neon_auth.users_sync'
        )
    return UsersTable(*parts) if len(parts) == 2 else UsersTable("public", parts[0])


def from_environment() -> UsersTable:
    """$TODO_RLS_USERS_TABLE parsed, or DEFAULT when it is unset or empty."""
    value = os.environ.get(USERS_TABLE_ENV, "").strip()
    return parse(value) if value else DEFAULT


class _HasContext(Protocol):
    def get_context(self) -> Any: ...


def users_table_of(op: _HasContext) -> UsersTable:
    """The users table of the running migration (what env.py configured), or DEFAULT."""
    found = op.get_context().opts.get(CONTEXT_OPTION)
    return found if isinstance(found, UsersTable) else DEFAULT
