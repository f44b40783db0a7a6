"""assert_owner_isolated: the isolation matrix for any table owned through a user_id column.

The owner gets one row; another user gets none in that table, so any row an attacker's
statement reaches is a row it does not own. Every statement runs as the application login role,
on its actor's own connection, in a transaction that is rolled back, after its positive control
(the owner's own statement does reach their row), so an empty table, a broken row factory or a
never-bound user cannot make the matrix pass. Writes run without RETURNING: RETURNING would
add the SELECT policy and hide a broken UPDATE, DELETE or INSERT policy.

Besides a random other user, the attackers include users whose ids are near misses of the
victim's (a prefix, a case change, a suffix, ...): a random id would pass a policy that compares
only a prefix, ignores case or trims, almost every time; a near miss fails it every time.

Foreign-key checks bypass RLS: for every foreign key of the table to another table with RLS and
an owner column, an attacker inserts a row of its own pointing at a parent row of the owner's,
and a user with a row of its own here (the "mover") updates that row to point at it. Only a
foreign key that carries the owner column, (parent_id, user_id) -> parent(id, user_id), or
insert and update policies that both check the parent, refuse both (23503 or 42501); a
single-column key alone lets the attacker probe and attach to others' rows.

Each probe costs one round trip and its ROLLBACK: BEGIN, the role check, the scope and the
statement go as one psycopg pipeline (COPY, which a pipeline cannot carry, follows it). Only the
statement's own errors can be refusals; an error of the others is raised, whatever its code.
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import psycopg
from psycopg import sql

from todo_rls.engine import database_url
from todo_rls.identity import DEFAULT_CONTEXT_TTL_SECONDS, SigningKey
from todo_rls.testing.database import create_user, new_user_id
from todo_rls.validation import validate_user_id

RowSpec = Mapping[str, Any] | Callable[[str], Mapping[str, Any]]
Kind = Literal["write", "count", "copy"]

# Who attacks the owner's row. "reused": a connection whose earlier transaction was scoped to
# the owner, as a pooled connection is when the next request arrives.
ACTORS = {
    "other": "another user",
    "unset": "a transaction that never set app.user_id",
    "empty": "a transaction with app.user_id = ''",
    "reused": "an unscoped transaction on a connection the owner used before",
    # SQL run by the app (an injection) sets the context itself: the owner's id with a
    # signature made for someone else, or with none at all.
    "forged": "another user claiming the owner's id with their own signature",
    "unsigned": "a transaction that sets app.user_id to the owner's id, unsigned",
}
# Ids derived from the id of the row's owner (for inserts, of the user the row claims), each
# defeating a comparison looser than text equality: a prefix (left(), ::"char", varchar(n)), a
# case-insensitive one (lower(), citext, ilike), one that trims, LIKE/starts_with either way.
NEAR_MISSES: dict[str, tuple[str, Callable[[str], str]]] = {
    "last": (
        "a user whose id differs from the owner's only in its last character",
        lambda owner: owner[:-1] + ("1" if owner.endswith("0") else "0"),
    ),
    "case": ("a user whose id is the owner's in another letter case", str.swapcase),
    "suffix": ("a user whose id is the owner's plus a suffix", lambda owner: owner + "0"),
    "space": ("a user whose id is the owner's plus a trailing space", lambda owner: owner + " "),
    "prefix": ("a user whose id is a prefix of the owner's", lambda owner: owner[:-1]),
}
ACTORS |= {actor: description for actor, (description, _) in NEAR_MISSES.items()}
# Runs only the foreign-key update probe, on a row of its own (so it is not in ACTORS, whose
# members must own nothing in the table).
MOVER = "a user changing a row of its own"
_DESCRIPTIONS = {**ACTORS, "mover": MOVER}
# A write pointing at the owner's parent row is refused by the foreign key (23503: it carries
# the owner column) or by a policy that checks the parent.
# The verifier refuses a forged or unsigned context with 28000, whatever the statement.
_CONTEXT_REFUSED = psycopg.errors.InvalidAuthorizationSpecification
_FK_REFUSALS = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.ForeignKeyViolation,
    _CONTEXT_REFUSED,
)
# The actors with a connection of their own: "unset" must never have set app.user_id in its
# session, "reused" carries the owner's committed scope. Every other probe sets its own
# transaction-local context and is rolled back, so the rest share the owner's connection, as a
# pooled connection serves one user after another (each connection costs a backend: on Citus,
# one on every worker it reaches too).
_OWN_CONNECTION = ("unset", "reused")
# Each probe is one pipeline (one round trip); without libpq's pipeline mode (libpq < 14) the
# same statements go one after the other, a round trip each.
PIPELINE = psycopg.Pipeline.is_supported()

_ROLE_FACTS = """
select current_user::text, r.rolsuper, r.rolbypassrls,
       pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER'),
       pg_catalog.row_security_active(c.oid)
from pg_catalog.pg_roles r, pg_catalog.pg_class c
where r.rolname = current_user and c.oid = pg_catalog.to_regclass(%s)
"""
_PRIMARY_KEY = """
select a.attname::text
from pg_catalog.pg_index i
join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
where i.indrelid = pg_catalog.to_regclass(%s) and i.indisprimary
order by pg_catalog.array_position(i.indkey::int2[], a.attnum)
"""
_SCOPE = (
    "select pg_catalog.set_config('app.user_id', %s, true),"
    " pg_catalog.set_config('app.user_sig', %s, true)"
)
# On Citus, set_config never reaches the workers, where the policies run: the scope is set as
# the wrapper sets it there, by begin_scope (SET LOCAL, propagated; revision eb55c0c808a9).
_CITUS_SCOPE = (
    "select todo_rls.begin_scope(%s, %s, pg_catalog.current_setting('search_path'), null, false)"
)
_HAS_CITUS = "select count(*) from pg_catalog.pg_extension where extname = 'citus'"
_CITUS_KEEPS_OWNER = "modifying the partition value of rows is not allowed"
_CITUS_DISTRIBUTION_COLUMN = """
select pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)::text
from pg_catalog.pg_dist_partition p
where p.logicalrelid = pg_catalog.to_regclass(%s) and p.partmethod = 'h'
"""
# Foreign keys of a table to tables with row level security and an owner column (%s): the
# parent rows an attacker could point at, since the foreign-key check does not see policies.
_GUARDED_PARENTS = """
select c.conname::text, c.confrelid, n.nspname::text, p.relname::text,
       array(select a.attname::text from pg_catalog.unnest(c.conkey) with ordinality k(num, i)
             join pg_catalog.pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.num
             order by k.i),
       array(select a.attname::text from pg_catalog.unnest(c.confkey) with ordinality k(num, i)
             join pg_catalog.pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.num
             order by k.i)
from pg_catalog.pg_constraint c
join pg_catalog.pg_class p on p.oid = c.confrelid
join pg_catalog.pg_namespace n on n.oid = p.relnamespace
where c.conrelid = pg_catalog.to_regclass(%s) and c.contype = 'f' and p.relrowsecurity
  and exists (select from pg_catalog.pg_attribute a
              where a.attrelid = c.confrelid and a.attname = %s and not a.attisdropped)
order by c.conname
"""


@dataclass(frozen=True)
class Leak:
    """One statement that reached the owner's row for someone who is not the owner."""

    table: str
    command: str
    actor: str
    detail: str
    # How to close it, when the matrix knows (said once per fix by assert_owner_isolated).
    fix: str = ""

    def __str__(self) -> str:
        who = _DESCRIPTIONS.get(self.actor, "the owner")
        return f"{self.table}: {self.command} as {who} {self.detail}"


@dataclass(frozen=True)
class _Statement:
    query: sql.Composed | sql.SQL
    params: Mapping[str, Any]
    # What "rows reached" is: the rowcount of a write, a count(*)'s value, or COPY's lines.
    kind: "Kind" = "write"


@dataclass(frozen=True)
class _ParentRef:
    """A foreign key to a table with RLS, and a parent row of the owner's it can point at."""

    constraint: str
    parent: str
    columns: tuple[str, ...]  # referencing, in the key's order
    parent_columns: tuple[str, ...]  # referenced, same order
    # The referencing columns, but the owner column, set to point at the owner's parent row;
    # the owner column stays the inserting user's own, so that the insert policy lets it in.
    values: Mapping[str, Any]

    @property
    def pointing(self) -> str:
        """How the probes through this key name what they do, after insert or update."""
        return f"pointing at the owner's {self.parent} row (foreign key {self.constraint})"

    def fix(self, owner: str) -> str:
        pairs = [(c, p) for c, p in zip(self.columns, self.parent_columns, strict=True)]
        columns = ", ".join([c for c, _ in pairs if c != owner] + [owner])
        parent_columns = ", ".join([p for c, p in pairs if c != owner] + [owner])
        return (
            f"make the foreign key {self.constraint} ({columns}) -> {self.parent}"
            f" ({parent_columns}) with a unique constraint on {self.parent} ({parent_columns})"
        )


class _Matrix:
    """The owner's row in table and the statements that probe it."""

    def __init__(
        self,
        admin: psycopg.Connection[Any],
        app_url: str,
        table: str,
        row: RowSpec,
        owner: str,
        parents: Mapping[str, RowSpec],
        signing_key: SigningKey,
    ) -> None:
        schema, _, name = table.rpartition(".")
        self.signing_key = signing_key
        self.table = table
        self.relation = sql.Identifier(schema or "public", name)
        self.regclass = self.relation.as_string(admin)
        self.owner_name, self.owner_column = owner, sql.Identifier(owner)
        self.conninfo = (
            database_url(app_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._row = row
        self._check_catalog(admin)
        citus = admin.execute(_HAS_CITUS).fetchone()
        self.scope_sql = _CITUS_SCOPE if citus and citus[0] else _SCOPE
        # Distributed by its owner column, the table refuses every change of it to anyone
        # (Citus moves no row between shards): there is no re-owning to probe.
        self.owner_fixed = False
        if self.scope_sql is _CITUS_SCOPE:
            column = admin.execute(_CITUS_DISTRIBUTION_COLUMN, (self.regclass,)).fetchone()
            self.owner_fixed = column is not None and column[0] == owner
        # other owns nothing here, so anything an attacker's statement reaches is not its own;
        # claimed owns nothing either and is who inserts claim to be (the owner's row may hold
        # the only slot a user has, as in a table keyed by user_id).
        self.owner, self.other, self.claimed = (create_user(admin, _cased_id()) for _ in "abc")
        # Upserts and re-owning write the attacker's id into the owner column: it must exist.
        for near_miss in self._near_misses(self.owner).values():
            create_user(admin, validate_user_id(near_miss))
        self.key = self._insert_row(admin, self.owner)
        self.parent_refs = self._parent_refs(admin, parents)
        # Only tables with such foreign keys get the mover and its row (see the module doc).
        self.mover, self.mover_key = "", {}
        if self.parent_refs:
            self.mover = create_user(admin, _cased_id())
            self.mover_key = self._insert_movers_row(admin)

    def _check_catalog(self, admin: psycopg.Connection[Any]) -> None:
        flags = admin.execute(
            "select relrowsecurity, relforcerowsecurity from pg_catalog.pg_class"
            " where oid = pg_catalog.to_regclass(%s)",
            (self.regclass,),
        ).fetchone()
        assert flags is not None, f"{self.table}: no such table"
        assert flags[0], (
            f"{self.table}: row level security is not enabled"
            f" (alter table {self.regclass} enable row level security)"
        )
        assert flags[1], (
            f"{self.table}: row level security is not forced, so the table's owner bypasses it"
            f" (alter table {self.regclass} force row level security)"
        )

    def values(self, owner: str) -> dict[str, Any]:
        """Column values of a new row owned by owner."""
        return {**_row_values(self._row, owner), self.owner_name: owner}

    def _insert_row(self, admin: psycopg.Connection[Any], user: str) -> dict[str, Any]:
        """Insert user's row (committed) and return its primary key."""
        key_columns = [str(r[0]) for r in admin.execute(_PRIMARY_KEY, (self.regclass,))]
        assert key_columns, f"{self.table}: has no primary key to address the owner's row by"
        insert = self.insert(self.values(user))
        returning = sql.SQL(" returning ") + sql.SQL(", ").join(map(sql.Identifier, key_columns))
        found = admin.execute(insert.query + returning, insert.params).fetchone()
        assert found is not None
        return dict(zip(key_columns, found, strict=True))

    def _insert_movers_row(self, admin: psycopg.Connection[Any]) -> dict[str, Any]:
        try:
            with admin.transaction():
                return self._insert_row(admin, self.mover)
        except psycopg.errors.IntegrityError as error:
            raise AssertionError(
                f"{self.table}: the foreign-key probes need a row of a second user, which could"
                f" not be made ({error.diag.message_primary}); give the row as a callable that"
                " takes a user id and returns fresh values (and that user's own parent rows)"
            ) from error

    def insert(self, values: Mapping[str, Any]) -> _Statement:
        return _insert(self.relation, values)

    def _parent_refs(
        self, admin: psycopg.Connection[Any], parents: Mapping[str, RowSpec]
    ) -> list[_ParentRef]:
        """Each foreign key to an RLS table, with a parent row of the owner's: parents[table]'s
        row if given (made here as admin), else the one the owner's row points at."""
        given = {_regclass_oid(admin, name): spec for name, spec in parents.items()}
        refs, used = [], set()
        found_keys = admin.execute(_GUARDED_PARENTS, (self.regclass, self.owner_name)).fetchall()
        for constraint, oid, schema, name, columns, parent_columns in found_keys:
            parent = sql.Identifier(schema, name)
            label = name if schema == "public" else f"{schema}.{name}"
            if oid in given:
                used.add(oid)
                row = {**_row_values(given[oid], self.owner), self.owner_name: self.owner}
                statement = _insert(parent, row)
                returning = sql.SQL(" returning ") + sql.SQL(", ").join(
                    map(sql.Identifier, parent_columns)
                )
                found = admin.execute(statement.query + returning, statement.params).fetchone()
            else:
                found = self._owners_parent(
                    admin, constraint, (parent, label), columns, parent_columns
                )
            assert found is not None
            values = {
                column: value
                for column, value in zip(columns, found, strict=True)
                if column != self.owner_name
            }
            refs.append(
                _ParentRef(constraint, label, tuple(columns), tuple(parent_columns), values)
            )
        assert used == set(given), (
            f"{self.table}: parents= names tables it has no foreign key to with row level"
            f" security and a {self.owner_name} column"
        )
        return refs

    def _owners_parent(
        self,
        admin: psycopg.Connection[Any],
        constraint: str,
        parent_named: tuple[sql.Identifier, str],
        columns: list[str],
        parent_columns: list[str],
    ) -> tuple[Any, ...]:
        """The referenced values of the parent row the owner's row points at, which must be
        the owner's (an attack on someone else's row would not be an attack on the owner)."""
        pointed = admin.execute(
            sql.SQL("select {} from {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), self.relation
            )
            + self._by_key(),
            _key_params(self.key),
        ).fetchone()
        assert pointed is not None
        parent, name = parent_named
        assert None not in pointed, (
            f"{self.table}: the owner's row leaves foreign key {constraint} null, so the matrix"
            f" has no parent row of the owner's to point at; pass parents={{{name!r}: <row>}}"
            f" (the columns of a {name} row; the owner column is filled in)"
        )
        found_owner = admin.execute(
            sql.SQL("select {} from {} where {}").format(
                self.owner_column,
                parent,
                sql.SQL(" and ").join(
                    sql.SQL("{} = %s").format(sql.Identifier(p)) for p in parent_columns
                ),
            ),
            pointed,
        ).fetchone()
        assert found_owner == (self.owner,), (
            f"{self.table}: the owner's row points through {constraint} at a {name} row that"
            " is not the owner's; make the row spec point at a parent row of the given user's"
        )
        return tuple(pointed)

    def child(self, ref: _ParentRef, user: str) -> _Statement:
        """INSERT of user's own row pointing through ref at the owner's parent row."""
        return self.insert({**self.values(user), **ref.values})

    def repoint(self, ref: _ParentRef, key: Mapping[str, Any]) -> _Statement:
        """UPDATE of the row with primary key key to point through ref at the owner's parent
        row (the owner column is left as it is)."""
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(f"v{i}"))
            for i, column in enumerate(ref.values)
        )
        query = sql.SQL("update {} set {}").format(self.relation, assignments) + self._by_key(key)
        params = {f"v{i}": value for i, value in enumerate(ref.values.values())}
        return _Statement(query, params | _key_params(key))

    def upsert(self, user: str) -> _Statement:
        """INSERT of user's row with the owner's key; on conflict, hand the row to user."""
        insert = self.insert({**self.values(user), **self.key})
        conflict = sql.SQL(" on conflict ({}) do update set {} = excluded.{}").format(
            sql.SQL(", ").join(map(sql.Identifier, self.key)), self.owner_column, self.owner_column
        )
        return _Statement(insert.query + conflict, insert.params)

    def _by_key(self, key: Mapping[str, Any] | None = None) -> sql.Composed:
        """WHERE on the primary key (default: the owner's row's); parameters k0, k1, ..."""
        return sql.SQL(" where ") + sql.SQL(" and ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(f"k{i}"))
            for i, column in enumerate(key or self.key)
        )

    def statement(
        self, template: str, by_key: bool, kind: Kind = "write", **params: Any
    ) -> _Statement:
        """template ({table}, {owner}) on the whole table, or on the owner's row by its key."""
        query = sql.SQL(template).format(table=self.relation, owner=self.owner_column)
        if by_key:
            query += self._by_key()
            params |= _key_params(self.key)
        if kind == "copy":
            query = sql.SQL("copy ({}) to stdout").format(query)
        return _Statement(query, params, kind)

    @staticmethod
    def _near_misses(victim: str) -> dict[str, str]:
        return {actor: derive(victim) for actor, (_, derive) in NEAR_MISSES.items()}

    def user_id(self, actor: str, victim: str = "owner") -> str | None:
        """The app.user_id actor's transaction carries (near misses: of victim's id); None:
        never set."""
        ids = {"owner": self.owner, "claimed": self.claimed, "other": self.other, "empty": ""}
        if actor in NEAR_MISSES:
            return self._near_misses(ids[victim])[actor]
        if actor in ("forged", "unsigned"):
            return ids[victim]
        return ids.get(actor)

    def signature(self, actor: str, user_id: str) -> str:
        """The app.user_sig actor's transaction carries with user_id: a valid one for user_id,
        except for the attacks on the signature itself."""
        if actor in ("unsigned", "empty"):
            return ""
        signed_for = self.other if actor == "forged" else user_id
        return self.signing_key.sign(signed_for, DEFAULT_CONTEXT_TTL_SECONDS)

    def _check_role(self, facts: tuple[Any, ...] | None) -> None:
        """facts: the row of _ROLE_FACTS, run in the probe's transaction."""
        assert facts is not None, f"{self.table}: the app role cannot see the table"
        role, superuser, bypassrls, owns, active = facts
        assert not (superuser or bypassrls or owns), (
            f"{self.table}: probes must run as the application role, which RLS binds;"
            f" {role} is a superuser, has BYPASSRLS or owns the table"
        )
        assert active, f"{self.table}: row_security_active is false for role {role}"

    def reached(
        self,
        conn: psycopg.Connection[Any],
        user_id: str | None,
        statement: _Statement,
        refusals: tuple[type[psycopg.Error], ...] = (
            psycopg.errors.InsufficientPrivilege,
            _CONTEXT_REFUSED,
        ),
        actor: str = "owner",
    ) -> int | None:
        """Rows statement reached as actor claiming user_id (None: unset) on conn, in a
        rolled-back transaction; None if refused: the statement itself raised one of refusals.
        An error of BEGIN, the role check or the scope is raised, whatever it is."""
        # conn autocommits: BEGIN is a statement of the pipeline (psycopg's own BEGIN would
        # cost a round trip of its own, see ADR 0006's history).
        prelude: list[tuple[str, Any]] = [("begin", None), (_ROLE_FACTS, (self.regclass,))]
        if user_id is not None:
            prelude.append((self.scope_sql, (user_id, self.signature(actor, user_id))))
        try:
            return self._reached(conn, prelude, statement, refusals)
        finally:
            if not conn.broken:  # a broken connection's own error is the one to raise
                conn.rollback()  # after an error (else the pipeline's ROLLBACK ran: no round trip)

    def _reached(
        self,
        conn: psycopg.Connection[Any],
        prelude: list[tuple[str, Any]],
        statement: _Statement,
        refusals: tuple[type[psycopg.Error], ...],
    ) -> int | None:
        # One round trip for the prelude, the statement and its ROLLBACK: one pipeline, one
        # Sync (a statement that fails skips the ROLLBACK: reached()'s own ends the
        # transaction). COPY cannot be pipelined: it follows the prelude's round trip.
        pipelined = statement.kind != "copy"
        cursors: list[psycopg.Cursor[Any]] = []
        error: psycopg.Error | None = None
        try:
            with conn.pipeline() if PIPELINE else nullcontext():
                for query, params in prelude:
                    cursors.append(conn.execute(query, params))
                if pipelined:
                    cursors.append(conn.execute(statement.query, statement.params))
                    if PIPELINE:
                        conn.execute("rollback")
        except psycopg.Error as raised:
            if not _answered(cursors, len(prelude)):
                raise  # BEGIN's, the role check's or the scope's: never a refusal
            error = raised
        self._check_role(cursors[1].fetchone())
        if error is None and not pipelined:
            try:
                return _copied(conn, statement)
            except psycopg.Error as raised:
                error = raised
        if error is None:
            return _counted(cursors[-1], statement.kind)
        if isinstance(error, refusals):
            return None
        # Citus refuses any change of a row's distribution column (user_id) outright.
        keeps_owner = isinstance(error, psycopg.errors.FeatureNotSupported) and (
            _CITUS_KEEPS_OWNER in str(error)
        )
        if self.owner_fixed and keeps_owner:
            return None
        raise error

    @contextmanager
    def connection(self, actor: str) -> Iterator[psycopg.Connection[Any]]:
        """A new connection for actor: "reused" first scoped to the owner and committed; any
        other as it comes, never scoped ("unset" keeps it so)."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            # Unprepared: the pipeline's ROLLBACK makes psycopg drop its prepared statements
            # with a DEALLOCATE ALL of its own (a round trip) once it has prepared any.
            conn.prepare_threshold = None
            if actor == "reused":
                with conn.transaction():
                    conn.execute(self.scope_sql, (self.owner, self.signature("owner", self.owner)))
            yield conn


def _insert(relation: sql.Identifier, values: Mapping[str, Any]) -> _Statement:
    query = sql.SQL("insert into {} ({}) values ({})").format(
        relation,
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder(f"v{i}") for i in range(len(values))),
    )
    return _Statement(query, {f"v{i}": v for i, v in enumerate(values.values())})


def _key_params(key: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters k0, k1, ... of _Matrix._by_key for a primary key's values."""
    return {f"k{i}": value for i, value in enumerate(key.values())}


def _row_values(row: RowSpec, owner: str) -> Mapping[str, Any]:
    return row(owner) if callable(row) else row


def _regclass_oid(admin: psycopg.Connection[Any], table: str) -> int:
    found = admin.execute("select pg_catalog.to_regclass(%s)::oid", (table,)).fetchone()
    assert found is not None
    assert found[0] is not None, f"parents=: no such table {table}"
    return int(found[0])


def _answered(cursors: list[psycopg.Cursor[Any]], count: int) -> bool:
    """Whether the first count statements ran. A pipeline raises the first error at its Sync,
    after the statements behind it were skipped: a cursor whose statement failed or was skipped
    has no result. Without a pipeline, the failing execute() returned no cursor."""
    return len(cursors) >= count and all(c.pgresult is not None for c in cursors[:count])


def _copied(conn: psycopg.Connection[Any], statement: _Statement) -> int:
    with conn.cursor().copy(statement.query, statement.params or None) as copy:
        return sum(bytes(block).count(b"\n") for block in copy)


def _counted(cursor: psycopg.Cursor[Any], kind: Kind) -> int:
    if kind == "count":
        counted = cursor.fetchone()
        return int(counted[0]) if counted else 0
    return cursor.rowcount


@dataclass(frozen=True)
class _Probe:
    """A command's statement for a user id; control_actor runs it first and must reach a row."""

    make: Callable[[str], _Statement]
    control_actor: str = "owner"
    refusals: tuple[type[psycopg.Error], ...] = (
        psycopg.errors.InsufficientPrivilege,
        _CONTEXT_REFUSED,
    )
    fix: str = ""


def _probes(m: _Matrix) -> dict[str, _Probe]:
    touch = "update {table} set {owner} = {owner}"
    return _row_probes(m, touch) | _parent_probes(m)


def _parent_probes(m: _Matrix) -> dict[str, _Probe]:
    """Per foreign key to an RLS table: a row of the actor's own pointing at the owner's parent
    row. The control is the owner pointing at it; a refusal is 23503 or a policy error."""
    return {
        f"insert {ref.pointing}": _Probe(
            partial(m.child, ref),
            refusals=_FK_REFUSALS,
            fix=ref.fix(m.owner_name),
        )
        for ref in m.parent_refs
    }


def _row_probes(m: _Matrix, touch: str) -> dict[str, _Probe]:
    probes = {
        "select by key": _Probe(
            lambda _: m.statement("select count(*) from {table}", True, "count")
        ),
        "select all": _Probe(lambda _: m.statement("select count(*) from {table}", False, "count")),
        "copy to": _Probe(lambda _: m.statement("select from {table}", False, "copy")),
        "update by key": _Probe(lambda _: m.statement(touch, by_key=True)),
        "update all": _Probe(lambda _: m.statement(touch, by_key=False)),
        "delete by key": _Probe(lambda _: m.statement("delete from {table}", by_key=True)),
        "delete all": _Probe(lambda _: m.statement("delete from {table}", by_key=False)),
        # A row claiming a user who is not the actor; the control is that user inserting it.
        "insert claiming someone else": _Probe(lambda _: m.insert(m.values(m.claimed)), "claimed"),
        "upsert over the owner's row": _Probe(m.upsert),
        # Takes every reachable row for the attacker. No WHERE: a WHERE would add the SELECT
        # policy, and this must fail on the UPDATE policy alone.
        "re-own to itself": _Probe(
            lambda user: m.statement("update {table} set {owner} = %(to)s", False, to=user)
        ),
    }
    if m.owner_fixed:  # its control cannot pass: Citus refuses it to the owner too
        del probes["re-own to itself"]
    return probes


def find_leaks(
    admin: psycopg.Connection[Any],
    app_url: str,
    table: str,
    row: RowSpec,
    *,
    owner_column: str = "user_id",
    parents: Mapping[str, RowSpec] | None = None,
    signing_key: SigningKey | None = None,
) -> list[Leak]:
    """Run the matrix and return what leaked; AssertionError if a control or a check fails.

    admin: an autocommit superuser connection to the database (it arranges the users and
    the owner's row, committed). app_url: the same database as the application login role.
    row: the owner's row's columns (the owner column is filled in), or a callable that takes
    the owner's user id and returns them (fresh keys, parent rows made through admin, ...).
    parents: for a foreign key to a table with RLS that the owner's row leaves null, that
    table's name and a row spec as row's: the matrix makes the owner such a parent row to
    point at. Otherwise the parent row is the one the owner's row points at. signing_key: the
    key installed in the database (default: $TODO_RLS_SIGNING_KEY), to sign each actor's
    context as todo_rls.scoped_session does.
    """
    key = signing_key if signing_key is not None else SigningKey.from_env()
    m = _Matrix(admin, app_url, table, row, owner_column, parents or {}, key)
    leaks = []
    probes = _probes(m)
    with ExitStack() as stack:
        shared = stack.enter_context(m.connection("owner"))
        conns = {
            actor: stack.enter_context(m.connection(actor)) if actor in _OWN_CONNECTION else shared
            for actor in ["owner", *ACTORS]
        }
        for command, probe in probes.items():
            control_user = m.user_id(probe.control_actor)
            assert control_user is not None
            # Once per command: every attack is rolled back, so the row stays as it was.
            control = m.reached(
                conns["owner"], control_user, probe.make(control_user), probe.refusals
            )
            _assert_control(table, command, control)
            for actor in ACTORS:
                user_id = m.user_id(actor, probe.control_actor)
                statement = probe.make(user_id or m.other)
                reached = m.reached(conns[actor], user_id, statement, probe.refusals, actor)
                if reached:
                    detail = f"reached {reached} row(s)"
                    leaks.append(Leak(table, command, actor, detail, probe.fix))
        # The mover points its own row at the owner's parent row; the control is the owner
        # pointing their own row at it.
        for ref in m.parent_refs:
            command = f"update {ref.pointing}"
            control = m.reached(conns["owner"], m.owner, m.repoint(ref, m.key), _FK_REFUSALS)
            _assert_control(table, command, control)
            reached = m.reached(shared, m.mover, m.repoint(ref, m.mover_key), _FK_REFUSALS, "mover")
            if reached:
                detail = f"reached {reached} row(s)"
                leaks.append(Leak(table, command, "mover", detail, ref.fix(m.owner_name)))
        # The owner hands their row to another user: the UPDATE policy's WITH CHECK must refuse.
        give_away = m.statement("update {table} set {owner} = %(to)s", by_key=False, to=m.other)
        if m.reached(conns["owner"], m.owner, give_away) is not None:
            leaks.append(Leak(table, "re-own to another user", "owner", "was not refused"))
    return leaks


def _assert_control(table: str, command: str, control: int | None) -> None:
    assert control, (
        f"{table}: positive control failed: {command} by the row's own user reached"
        f" {'nothing (refused)' if control is None else '0 rows'}; the owner must reach"
        " their own row, or the matrix proves nothing (check the row values, the"
        " owner's policies, and that the signing key is installed: todo-rls keys add)"
    )


def _cased_id() -> str:
    """A Better Auth-shaped id with a letter in it, so that a case change makes another id."""
    user_id = new_user_id()
    while user_id == user_id.swapcase():  # all digits (1 in 10^25): no case change
        user_id = new_user_id()
    return user_id


def assert_owner_isolated(
    admin: psycopg.Connection[Any],
    app_url: str,
    table: str,
    row: RowSpec,
    *,
    owner_column: str = "user_id",
    parents: Mapping[str, RowSpec] | None = None,
    signing_key: SigningKey | None = None,
) -> None:
    """AssertionError naming table, command and actor of every way past the owner's policies,
    and the fix where known (a foreign key that must carry the owner column).

    Arguments as find_leaks. Checks first that row level security is enabled and forced.
    """
    leaks = find_leaks(
        admin,
        app_url,
        table,
        row,
        owner_column=owner_column,
        parents=parents,
        signing_key=signing_key,
    )
    fixes = dict.fromkeys(leak.fix for leak in leaks if leak.fix)
    if leaks:
        # Raised, not asserted: loaded with -p, pytest rewrites this module's asserts and would
        # append its own rendering of the leaks list to the report.
        raise AssertionError(
            f"{table} is not owner-isolated:\n"
            + "\n".join(f"  {x}" for x in leaks)
            + "".join(f"\n  fix: {fix}" for fix in fixes)
        )
