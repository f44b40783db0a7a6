"""Guard: every table the app role can reach is owner-protected; enable_owner_rls's SQL is pinned.

guarded_tables() reads the scope from the catalog, not from a list: every table the app role (or
PUBLIC) holds a privilege on, in any schema, and every table with a user_id column (an owned
table by its shape, whether or not anyone granted it yet). rls_offenders() lists what is wrong
with each: it must find nothing on the migrated schema, whatever tables later migrations add
(the docs' recipe included), and must name a table created without enable_owner_rls, so a
migration that forgets the helper fails CI here.
"""

import hashlib
import importlib.util
import re
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, create_engine, pool

from todo_rls.check.context import Conn
from todo_rls.cli import main
from todo_rls.models import metadata
from todo_rls.owner_rls import (
    FORGEABLE_OWNER_MATCHES,
    OWNER_MATCHES,
    OwnerRlsArgumentError,
    disable_owner_rls,
    enable_owner_rls,
)
from todo_rls.testing import assert_owner_isolated

from catalog import snapshot
from fix_db import APP_LOGIN, url_as
from fix_rolled import Rolled, run_op
from fix_server import PgServer

# The guard's cases create, weaken and drop tables and policies in one transaction on the shared
# database, with real Alembic ops on the same connection, and run the guard there; the
# transaction is rolled back after the test (fix_rolled). The docs' recipe commits (the check and
# the isolation matrix read it over connections of their own), and its downgrade undoes it.

# Better Auth's tables (with its jwt plugin's jwks): not ours to protect. Alembic's version
# tables are known by their shape (one column, version_num), whatever their name.
ALLOWLIST = frozenset({"user", "session", "account", "verification", "jwks"})
APP_ROLE = "todo_app"
# command letter in pg_policy -> (name, whether it has USING, whether it has WITH CHECK)
COMMANDS = {"r": ("select", True, False), "a": ("insert", False, True)} | {
    "w": ("update", True, True),
    "d": ("delete", True, False),
}
CORE_REVISION = next(
    (Path(__file__).resolve().parents[1] / "migrations" / "versions").glob("*-3f9c2a7d1b04_*.py")
)


def canonical_predicate(conn: psycopg.Connection[Any]) -> str:
    """How this server deparses "owner matches" (the text varies between major versions)."""
    with conn.transaction(force_rollback=True):
        conn.execute("create temporary table guard_probe (user_id text)")
        conn.execute(f"create policy guard_probe on guard_probe using ({OWNER_MATCHES})")
        row = conn.execute(
            "select pg_catalog.pg_get_expr(polqual, polrelid) from pg_catalog.pg_policy"
            " where polname = 'guard_probe'"
        ).fetchone()
    assert row is not None
    return str(row[0])


# Tables of non-system schemas that todo_app (directly, through a role it belongs to, or through
# PUBLIC) can use in any way, or that have a user_id column; minus the allowlist (schema public)
# and the Alembic version tables todo_app cannot use.
_GUARDED = """
select c.oid::regclass::text
from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p')
  and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
  and c.relpersistence <> 't'
  and not (n.nspname = 'public' and c.relname = any(%(allow)s))
  and (pg_catalog.has_table_privilege(%(role)s, c.oid,
         'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
       or pg_catalog.has_any_column_privilege(%(role)s, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')
       or exists (select from pg_catalog.pg_attribute a
                  where a.attrelid = c.oid and a.attname = 'user_id' and a.attnum > 0
                    and not a.attisdropped))
order by 1
"""


def guarded_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables the guard holds to the rule, schema-qualified where search_path needs it."""
    rows = conn.execute(_GUARDED, {"allow": sorted(ALLOWLIST), "role": APP_ROLE}).fetchall()
    return [row[0] for row in rows]


def rls_offenders(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(table, problem) for every guarded table that is not protected like the core tables."""
    expected = canonical_predicate(conn)
    problems: list[tuple[str, str]] = []
    for table in guarded_tables(conn):
        enabled, forced, indexed = conn.execute(
            """
            select relrowsecurity, relforcerowsecurity, exists (
              select from pg_catalog.pg_index i
              join pg_catalog.pg_attribute a on a.attrelid = i.indrelid
                and a.attnum = i.indkey[0] and a.attname = 'user_id'
              where i.indrelid = c.oid and i.indpred is null)
            from pg_catalog.pg_class c where oid = %s::regclass
            """,
            (table,),
        ).fetchone() or (False, False, False)
        if not enabled:
            problems.append((table, "row level security is not enabled"))
        if not forced:
            problems.append((table, "row level security is not forced"))
        policies = conn.execute(
            """
            select polname::text, polcmd::text, polpermissive,
                   array(select pg_catalog.quote_ident(r.rolname) from pg_catalog.pg_roles r
                         where r.oid = any(polroles) order by 1)::text[]
                     || case when 0 = any(polroles) then array['PUBLIC'] else '{}' end,
                   pg_catalog.pg_get_expr(polqual, polrelid),
                   pg_catalog.pg_get_expr(polwithcheck, polrelid)
            from pg_catalog.pg_policy where polrelid = %s::regclass order by 1
            """,
            (table,),
        ).fetchall()
        name = table.rsplit(".", 1)[-1]
        problems += [(table, p) for p in _policy_problems(name, policies, expected)]
        if not indexed:
            problems.append((table, "no index leads with user_id (enable_owner_rls index=True)"))
    return problems


def _policy_problems(table: str, policies: list[Any], expected: str) -> list[str]:
    found: list[str] = []
    for name, cmd, permissive, roles, qual, check in policies:
        if cmd not in COMMANDS:
            found.append(f"policy {name} is for all commands; use one policy per command")
            continue
        command, has_using, has_check = COMMANDS[cmd]
        wanted = (f"{table}_{command}", True, [APP_ROLE])
        wanted_exprs = (expected if has_using else None, expected if has_check else None)
        if (name, permissive, roles) != wanted or (qual, check) != wanted_exprs:
            found.append(
                f"policy {name} ({command}, roles {roles}, using {qual}, with check {check})"
                " is not the owner policy enable_owner_rls creates"
            )
    present = {cmd for _, cmd, *_ in policies}
    found += [
        f"no {command} policy" for cmd, (command, *_) in COMMANDS.items() if cmd not in present
    ]
    return found


# --- the guard on the migrated schema ------------------------------------------------------


def test_every_table_the_app_role_can_reach_has_forced_rls_and_the_four_owner_policies(
    admin: psycopg.Connection[Any],
) -> None:
    # Positive control: the scope, read from the catalog, holds every table of our models, so
    # an empty scope cannot pass; whatever else a migration added is in it too.
    ours = {table.name for table in metadata.sorted_tables} - {"user"}
    assert ours <= set(guarded_tables(admin)), guarded_tables(admin)
    assert rls_offenders(admin) == []


# --- the guard catches what a careless migration does --------------------------------------

# A scratch table, named so that it never collides with a table the docs' recipe (note) or a
# later migration adds.
SCRATCH = "scratch_note"
NOTE = (
    f"create table public.{SCRATCH} (id uuid primary key default gen_random_uuid(),"
    ' user_id text not null references public."user" (id) on delete cascade,'
    " body text not null, updated_at timestamptz not null default now())"
)
ALL_POLICIES_MISSING = [
    (SCRATCH, "no select policy"),
    (SCRATCH, "no insert policy"),
    (SCRATCH, "no update policy"),
    (SCRATCH, "no delete policy"),
]
NO_INDEX = (SCRATCH, "no index leads with user_id (enable_owner_rls index=True)")


@pytest.fixture
def conn(db: Rolled) -> Conn:
    """The test's transaction, as the superuser: the break, and the guard reading it."""
    return db.conn


def test_guard_reports_a_table_created_without_the_helper(conn: Conn) -> None:
    assert rls_offenders(conn) == []  # positive control: clean before the new table
    conn.execute(NOTE)
    assert rls_offenders(conn) == [
        (SCRATCH, "row level security is not enabled"),
        (SCRATCH, "row level security is not forced"),
        *ALL_POLICIES_MISSING,
        NO_INDEX,
    ]


def test_guard_accepts_the_same_table_protected_by_the_helper(
    conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(NOTE)
    assert rls_offenders(conn) != []  # positive control
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    assert rls_offenders(conn) == []


# Each breaks the helper-made scratch table in one way; the guard must name exactly that.
BREAKAGES = {
    "rls enabled but not forced": (
        "alter table scratch_note no force row level security",
        ["row level security is not forced"],
    ),
    "a policy dropped": ("drop policy scratch_note_delete on scratch_note", ["no delete policy"]),
    "a policy widened": (
        "alter policy scratch_note_select on scratch_note using (true)",
        ["policy scratch_note_select (select, roles ['todo_app'], using true, with check None)"],
    ),
    "update without with check": (
        "drop policy scratch_note_update on scratch_note; create policy scratch_note_update"
        f" on scratch_note for update to todo_app using ({OWNER_MATCHES})",
        ["policy scratch_note_update (update, roles ['todo_app'], using {owner}, with check None)"],
    ),
    "an extra policy for public": (
        "create policy scratch_note_all on scratch_note using (true)",
        ["policy scratch_note_all is for all commands; use one policy per command"],
    ),
    "a policy for another role": (
        "alter policy scratch_note_insert on scratch_note to public",
        ["policy scratch_note_insert (insert, roles ['PUBLIC'], using None, with check {owner})"],
    ),
    "a fail-open predicate": (
        "alter policy scratch_note_select on scratch_note using (user_id = coalesce("
        "nullif(pg_catalog.current_setting('app.user_id', true), ''), user_id))",
        ["policy scratch_note_select (select, roles ['todo_app'], using (user_id = COALESCE"],
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_guard_names_a_weakened_protection(
    breakage: str, conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(NOTE)
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    assert rls_offenders(conn) == []  # positive control
    statement, expected = BREAKAGES[breakage]
    conn.execute(statement)
    owner = canonical_predicate(conn)
    found = rls_offenders(conn)
    assert [table for table, _ in found] == [SCRATCH] * len(expected), found
    for (_, problem), start in zip(found, expected, strict=True):
        assert problem.startswith(start.format(owner=owner)), (problem, start)


def test_allowlisted_better_auth_tables_are_not_guarded(conn: Conn) -> None:
    conn.execute('create table public.session (id text primary key, "userId" text not null)')
    conn.execute("create table public.session_log (id text primary key)")
    conn.execute("grant select on public.session, public.session_log to todo_app")
    # Positive control: the unlisted look-alike is reported; the allowlisted name is not.
    assert {table for table, _ in rls_offenders(conn)} == {"session_log"}


def test_what_the_app_role_can_reach_is_guarded_in_any_schema_and_nothing_else(
    conn: Conn,
) -> None:
    conn.execute("create schema scratch_other")
    conn.execute("create table scratch_other.lookup (code text primary key)")
    conn.execute("create table public.scratch_internal (code text primary key)")
    conn.execute("create table public.alembic_version (version_num varchar(32) primary key)")
    # No user_id and nothing granted: out of the app role's reach, so no business of the guard.
    assert rls_offenders(conn) == []
    conn.execute("grant usage on schema scratch_other to todo_app")
    conn.execute("grant select on scratch_other.lookup to todo_app")
    conn.execute("grant select on public.scratch_internal to public")  # PUBLIC counts
    conn.execute("grant select on public.alembic_version to todo_app")
    reached = {table for table, _ in rls_offenders(conn)}
    assert reached == {"scratch_other.lookup", "scratch_internal", "alembic_version"}


# --- the docs' recipe ------------------------------------------------------------------------

OWNED_TABLES_DOC = Path(__file__).resolve().parents[1] / "docs" / "owned-tables.md"


def docs_recipe() -> ModuleType:
    """The migration docs/owned-tables.md shows (its python block calling enable_owner_rls)."""
    blocks = re.findall(r"```python\n(.*?)```", OWNED_TABLES_DOC.read_text(), flags=re.DOTALL)
    [block] = [b for b in blocks if "enable_owner_rls(op," in b]
    module = ModuleType("docs_recipe")
    exec(compile(block, str(OWNED_TABLES_DOC), "exec"), module.__dict__)  # noqa: S102 (our docs)
    return module


@pytest.fixture
def committing_connection(pg_server: PgServer, dbname: str) -> Iterator[Connection]:
    """A SQLAlchemy connection of its own to this test's database, for a migration that commits."""
    engine = create_engine(pg_server.url(dbname), poolclass=pool.NullPool)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


def run_recipe(connection: Connection, step: str) -> None:
    """Run the recipe's upgrade or downgrade with a real Alembic op, and commit."""
    with Operations.context(MigrationContext.configure(connection)):
        getattr(docs_recipe(), step)()
    connection.commit()


def test_the_docs_recipe_makes_a_table_the_guard_the_check_and_the_plugin_accept(
    admin: psycopg.Connection[Any],
    committing_connection: Connection,
    pg_server: PgServer,
    dbname: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = snapshot(admin)
    run_recipe(committing_connection, "upgrade")
    assert "note" in guarded_tables(admin)  # positive control: the recipe's table is in scope
    assert rls_offenders(admin) == []
    app_url = url_as(pg_server, dbname, APP_LOGIN)
    assert main(["check", "--url", app_url, "--login-role", APP_LOGIN]) == 0, capsys.readouterr()
    assert_owner_isolated(admin, app_url, "note", {"body": "hello"})
    # The undo, which the shared database's fingerprint check (fix_shared) also holds it to.
    run_recipe(committing_connection, "downgrade")
    assert snapshot(admin) == before


# --- enable_owner_rls / disable_owner_rls --------------------------------------------------

# --- enable_owner_rls / disable_owner_rls --------------------------------------------------


def test_disable_owner_rls_restores_the_table_exactly_as_it_was(
    conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(NOTE)
    before = snapshot(conn)
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    assert snapshot(conn) != before  # positive control
    run_op(migration_connection, disable_owner_rls, SCRATCH, index=True)
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("ddl", "missing"),
    [
        ("create table public.scratch_note (id int)", "user_id, updated_at"),
        ("create table public.scratch_note (user_id uuid, updated_at timestamptz)", "user_id"),
        ("create table public.scratch_note (user_id text, updated_at timestamp)", "updated_at"),
    ],
)
def test_enable_owner_rls_refuses_a_table_without_an_owner_column_and_changes_nothing(
    ddl: str, missing: str, conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(ddl)
    before = snapshot(conn)
    # In a savepoint: the failed op rolls back to it, as a migration's transaction would.
    with pytest.raises(Exception, match=f"lacks column.*: {missing}") as raised, conn.transaction():
        run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    assert isinstance(getattr(raised.value, "orig", None), psycopg.errors.RaiseException)
    assert snapshot(conn) == before


@pytest.mark.usefixtures("icu")
def test_enable_owner_rls_refuses_a_case_insensitive_owner_column_naming_the_fix(
    conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(
        "create collation public.ci (provider = icu, locale = 'und-u-ks-level2',"
        " deterministic = false)"
    )
    conn.execute(
        "create table public.scratch_note (user_id text collate public.ci"
        ' references public."user" (id), updated_at timestamptz)'
    )
    before = snapshot(conn)
    message = r"user_id of public\.scratch_note has a nondeterministic"
    with pytest.raises(Exception, match=message) as raised, conn.transaction():  # as above
        run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    error = getattr(raised.value, "orig", None)
    assert isinstance(error, psycopg.errors.RaiseException)
    fix = 'alter table public.scratch_note alter column user_id type text collate "default";'
    assert error.diag.message_hint is not None and fix in error.diag.message_hint
    assert snapshot(conn) == before  # nothing half-written
    # The fix it names works, and then the helper protects the table.
    conn.execute(fix)
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    assert rls_offenders(conn) == []


def user_id_indexes(conn: psycopg.Connection[Any], table: str = SCRATCH) -> list[str]:
    """Names of table's indexes whose first column is user_id, sorted."""
    rows = conn.execute(
        "select i.indexrelid::regclass::text from pg_catalog.pg_index i"
        " join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]"
        " where i.indrelid = %s::regclass and a.attname = 'user_id' order by 1",
        (table,),
    ).fetchall()
    return [row[0] for row in rows]


def test_index_true_creates_an_index_on_user_id_and_disable_drops_it(
    conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(NOTE)
    assert user_id_indexes(conn) == []  # positive control: the table has none of its own
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    assert user_id_indexes(conn) == ["ix_scratch_note_user_id"]
    assert rls_offenders(conn) == []
    run_op(migration_connection, disable_owner_rls, SCRATCH, index=True)
    assert user_id_indexes(conn) == []


@pytest.mark.parametrize(
    ("existing", "counts"),
    [
        ("create index scratch_by_owner on scratch_note (user_id, updated_at)", True),
        ("alter table scratch_note add constraint scratch_owner_key unique (user_id, id)", True),
        ("create index scratch_by_body on scratch_note (body, user_id)", False),
        ("create index scratch_partial on scratch_note (user_id) where body <> ''", False),
    ],
    ids=["leading-index", "leading-unique", "user-id-second", "partial"],
)
def test_index_true_keeps_an_index_that_leads_with_user_id_and_disable_leaves_it(
    existing: str, counts: bool, conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(NOTE)
    conn.execute(existing)
    before = user_id_indexes(conn)
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    created = sorted(set(user_id_indexes(conn)) - set(before))
    # Only a whole (non-partial) index whose first column is user_id serves every policy.
    assert created == ([] if counts else ["ix_scratch_note_user_id"])
    run_op(migration_connection, disable_owner_rls, SCRATCH, index=True)
    assert user_id_indexes(conn) == before


def test_disable_drops_only_the_index_enable_created_not_one_of_the_same_name(
    conn: Conn, migration_connection: Connection
) -> None:
    conn.execute(NOTE)
    # The app's own index, named as the helper would name it, made before the helper ran.
    conn.execute("create index ix_scratch_note_user_id on scratch_note (user_id, body)")
    run_op(migration_connection, enable_owner_rls, SCRATCH, index=True)
    run_op(migration_connection, disable_owner_rls, SCRATCH, index=True)
    assert user_id_indexes(conn) == ["ix_scratch_note_user_id"]


def test_the_index_only_appends_to_what_the_helper_emits() -> None:
    # With index=False the helper emits the SQL pinned below; the index (the default) adds one
    # statement at the end of enable (the start of disable), and creates nothing when an index
    # leading with user_id exists (tests above).
    for helper, position in ((enable_owner_rls, -1), (disable_owner_rls, 0)):
        plain, indexed = Recorder(), Recorder()
        helper(plain, "user_preference", index=False)
        helper(indexed, "user_preference")
        extra = indexed.statements.pop(position)
        assert indexed.statements == plain.statements
        assert "ix_user_preference_user_id" in extra


def test_no_user_id_statistics_only_adds_to_what_the_helper_emits() -> None:
    # The default drops user_id's statistics (ADR 0011): two statements after enable's
    # precondition, one at the end of disable; nothing else changes.
    for helper, positions in ((enable_owner_rls, (1, 1)), (disable_owner_rls, (-1,))):
        kept, dropped = Recorder(), Recorder()
        helper(kept, "user_preference", user_id_statistics=True)
        helper(dropped, "user_preference")
        extra = [dropped.statements.pop(position) for position in positions]
        assert dropped.statements == kept.statements
        assert all("user_id" in statement for statement in extra)
        assert "set statistics" in extra[0]


def test_enable_owner_rls_without_trigger_accepts_a_table_without_updated_at(
    conn: Conn, migration_connection: Connection
) -> None:
    conn.execute('create table public.scratch_note (user_id text references public."user" (id))')
    run_op(migration_connection, enable_owner_rls, SCRATCH, updated_at=False, index=True)
    assert rls_offenders(conn) == []
    triggers = (
        "select count(*) from pg_trigger"
        " where tgrelid = 'scratch_note'::regclass and not tgisinternal"
    )
    assert conn.execute(triggers).fetchone() == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": "public.scratch_note"}, "not a plain SQL identifier"),
        ({"table": "scratch_note; drop table task"}, "not a plain SQL identifier"),
        ({"table": ""}, "not a plain SQL identifier"),
        ({"table": "1note"}, "not a plain SQL identifier"),
        ({"table": "n" * 49}, "at most 48 are allowed"),
        ({"table": 7}, "table must be a str, not int"),
        ({"table": "scratch_note", "schema": 'a"b'}, "schema 'a\"b' is not a plain SQL identifier"),
        ({"table": "scratch_note", "app_role": "todo app"}, "app_role 'todo app' is not a plain"),
        ({"table": "scratch_note", "updated_at": "yes"}, "updated_at must be True or False"),
        ({"table": "scratch_note", "index": 1}, "index must be True or False"),
    ],
)
def test_helpers_refuse_bad_arguments_naming_the_fix(kwargs: dict[str, Any], message: str) -> None:
    recorder = Recorder()
    for helper in (enable_owner_rls, disable_owner_rls):
        with pytest.raises(OwnerRlsArgumentError, match=message.replace("'", ".")):
            helper(recorder, **kwargs)
    assert recorder.statements == []  # nothing emitted: the migration stops before any SQL
    enable_owner_rls(recorder, "n" * 48)  # positive control: the longest allowed name works
    assert recorder.statements[-2].startswith(f"create trigger {'n' * 48}_set_updated_at ")
    assert f"ix_{'n' * 48}_user_id" in recorder.statements[-1]


def test_reserved_word_names_are_quoted() -> None:
    recorder = Recorder()
    enable_owner_rls(recorder, "order", schema="select", app_role="user", user_id_statistics=True)
    assert recorder.statements[1] == 'alter table "select"."order" enable row level security'
    assert recorder.statements[3].startswith(
        'create policy order_select on "select"."order" for select to "user" using'
    )


# --- the emitted SQL is frozen ---------------------------------------------------------------


class Recorder:
    """Stands in for Alembic's op: keeps the SQL text instead of running it."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, sqltext: str) -> None:
        self.statements.append(sqltext)


class CoreOp(Recorder):
    """A Recorder that also answers op.get_context(), as the core revision calls it."""

    def get_context(self) -> MigrationContext:
        opts = {"as_sql": True, "output_buffer": StringIO()}
        return MigrationContext.configure(dialect_name="postgresql", opts=opts)


def core_revision() -> ModuleType:
    """The core revision's module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("core_revision", CORE_REVISION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helper_emits_exactly_the_core_revisions_protection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core, op = core_revision(), CoreOp()
    monkeypatch.setattr(core, "op", op)
    core._protect_owned_table("user_preference")
    helper = Recorder()
    enable_owner_rls(helper, "user_preference", index=False, user_id_statistics=True)
    assert len(op.statements) == 8  # positive control: the core protection was recorded
    # The helper adds only its precondition check in front, and keys its policies on the
    # verified identity, as revision 5b7e9c1d2a40 re-keyed the core tables' policies.
    verified = [s.replace(FORGEABLE_OWNER_MATCHES, OWNER_MATCHES) for s in op.statements]
    assert verified != op.statements  # the core revision's policies used the setting
    assert helper.statements[0].startswith("do $$")
    assert helper.statements[1:] == verified


# Frozen: migrations call these helpers, so already-applied revisions depend on this text.
# A failure here means the emitted SQL changed; put the new behaviour in a new function.
# The one allowed kind of change is to the precondition DO block (statement 1), which only
# raises or passes and creates nothing: what a migration leaves behind for a valid table is
# unchanged, and that resulting schema is what the frozen-history rule protects (the other
# statements are still pinned, equal to the core revision's, by the test above). Changed once:
# 2026-12 (review 2, finding 5), refuse a user_id with a nondeterministic collation
# (was fcde56d2d73d87e495bc600c78e52a26e559f918541a7ab23b0ea691bbafea19). Changed with a
# decision, ADR 0008: policies keyed on the verified identity instead of the forgeable setting,
# and a precondition that the verifier exists (was b3320781ff37b12102696f6259550aa176403858b1cf
# 9ea70d87779229f0cf47); revision 02e680687f90 keeps, frozen, what was emitted before.
# Changed with issue 13: the index on user_id became the default (index=True), so a downstream
# revision written earlier gets, on a database where it runs for the first time, an index on
# user_id when none leads with it, and nothing else changes; the pins are of index=False, which
# emits exactly the earlier SQL (test_the_index_only_appends_to_what_the_helper_emits).
# Changed with ADR 0011 the same way: user_id keeps no planner statistics by default
# (user_id_statistics=False); the pins are of user_id_statistics=True, which emits the earlier
# SQL (test_no_user_id_statistics_only_adds_to_what_the_helper_emits).
PINNED_SHA256 = {
    "enable_owner_rls": "5bd6f2f9820008aa525d6dd6a6fc6b844ad23c9f55d65549f864cb714c45c8a2",
    "disable_owner_rls": "88bf19dfcfbf7c5acdecd3e929f6f8a2580803fa537f974f148b69159d88919d",
}


@pytest.mark.parametrize("helper", [enable_owner_rls, disable_owner_rls], ids=PINNED_SHA256)
def test_emitted_sql_for_user_preference_is_pinned(helper: Any) -> None:
    recorder = Recorder()
    helper(recorder, "user_preference", index=False, user_id_statistics=True)
    digest = hashlib.sha256("\n;\n".join(recorder.statements).encode()).hexdigest()
    assert digest == PINNED_SHA256[helper.__name__], "\n;\n".join(recorder.statements)
