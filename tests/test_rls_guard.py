"""Guard: every table of the app schema is owner-protected; enable_owner_rls's SQL is pinned.

rls_offenders() lists what is wrong with each table outside the allowlist. It must find nothing
on the migrated schema and must name a table created without enable_owner_rls, so a migration
that forgets the helper fails CI here.
"""

import hashlib
import importlib.util
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from psycopg import sql
from sqlalchemy import Connection, create_engine, pool

from todo_rls.owner_rls import (
    OWNER_MATCHES,
    OwnerRlsArgumentError,
    disable_owner_rls,
    enable_owner_rls,
)

from catalog import snapshot
from fix_server import PgServer

# Better Auth's tables (with its jwt plugin's jwks) and Alembic's own: not ours to protect.
ALLOWLIST = frozenset({"user", "session", "account", "verification", "jwks", "alembic_version"})
APP_ROLE = "todo_app"
# command letter in pg_policy -> (name, whether it has USING, whether it has WITH CHECK)
COMMANDS = {"r": ("select", True, False), "a": ("insert", False, True)} | {
    "w": ("update", True, True),
    "d": ("delete", True, False),
}
OUR_TABLES = {"task", "conversation", "message", "user_preference"}
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


def guarded_tables(conn: psycopg.Connection[Any], schema: str = "public") -> list[str]:
    """The tables of schema the guard holds to the rule: all but the allowlisted ones."""
    rows = conn.execute(
        "select relname::text from pg_catalog.pg_class where relnamespace = %s::regnamespace"
        " and relkind in ('r', 'p') and not (relname = any(%s)) order by 1",
        (schema, sorted(ALLOWLIST)),
    ).fetchall()
    return [row[0] for row in rows]


def rls_offenders(conn: psycopg.Connection[Any], schema: str = "public") -> list[tuple[str, str]]:
    """(table, problem) for every guarded table that is not protected like the core tables."""
    expected = canonical_predicate(conn)
    problems: list[tuple[str, str]] = []
    for table in guarded_tables(conn, schema):
        relation = sql.Identifier(schema, table).as_string(conn)
        enabled, forced = conn.execute(
            "select relrowsecurity, relforcerowsecurity from pg_catalog.pg_class"
            " where oid = %s::regclass",
            (relation,),
        ).fetchone() or (False, False)
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
            (relation,),
        ).fetchall()
        problems += [(table, p) for p in _policy_problems(table, policies, expected)]
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


def test_every_table_in_the_app_schema_has_forced_rls_and_the_four_owner_policies(
    admin: psycopg.Connection[Any],
) -> None:
    # Positive control: the guard looks at every table of ours, so an empty scope cannot pass.
    assert set(guarded_tables(admin)) == OUR_TABLES
    assert rls_offenders(admin) == []


# --- the guard catches what a careless migration does --------------------------------------

NOTE = (
    "create table public.note (id uuid primary key default gen_random_uuid(),"
    ' user_id text not null references public."user" (id) on delete cascade,'
    " body text not null, updated_at timestamptz not null default now())"
)
ALL_POLICIES_MISSING = [
    ("note", "no select policy"),
    ("note", "no insert policy"),
    ("note", "no update policy"),
    ("note", "no delete policy"),
]


@pytest.fixture
def migration_connection(pg_server: PgServer, dbname: str) -> Iterator[Connection]:
    """A SQLAlchemy connection to this test's database, as a migration would hold it."""
    engine = create_engine(pg_server.url(dbname), poolclass=pool.NullPool)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


def run_op(connection: Connection, action: Any, *args: Any, **kwargs: Any) -> None:
    """Run a helper with a real Alembic op bound to connection, and commit."""
    action(Operations(MigrationContext.configure(connection)), *args, **kwargs)
    connection.commit()


def test_guard_reports_a_table_created_without_the_helper(admin: psycopg.Connection[Any]) -> None:
    assert rls_offenders(admin) == []  # positive control: clean before the new table
    admin.execute(NOTE)
    assert rls_offenders(admin) == [
        ("note", "row level security is not enabled"),
        ("note", "row level security is not forced"),
        *ALL_POLICIES_MISSING,
    ]


def test_guard_accepts_the_same_table_protected_by_the_helper(
    admin: psycopg.Connection[Any], migration_connection: Connection
) -> None:
    admin.execute(NOTE)
    assert rls_offenders(admin) != []  # positive control
    run_op(migration_connection, enable_owner_rls, "note")
    assert rls_offenders(admin) == []


# Each breaks the helper-made note table in one way; the guard must name exactly that.
BREAKAGES = {
    "rls enabled but not forced": (
        "alter table note no force row level security",
        ["row level security is not forced"],
    ),
    "a policy dropped": ("drop policy note_delete on note", ["no delete policy"]),
    "a policy widened": (
        "alter policy note_select on note using (true)",
        ["policy note_select (select, roles ['todo_app'], using true, with check None)"],
    ),
    "update without with check": (
        "drop policy note_update on note; create policy note_update on note for update"
        f" to todo_app using ({OWNER_MATCHES})",
        ["policy note_update (update, roles ['todo_app'], using {owner}, with check None)"],
    ),
    "an extra policy for public": (
        "create policy note_all on note using (true)",
        ["policy note_all is for all commands; use one policy per command"],
    ),
    "a policy for another role": (
        "alter policy note_insert on note to public",
        ["policy note_insert (insert, roles ['PUBLIC'], using None, with check {owner})"],
    ),
    "a fail-open predicate": (
        "alter policy note_select on note using (user_id = coalesce("
        "nullif(pg_catalog.current_setting('app.user_id', true), ''), user_id))",
        ["policy note_select (select, roles ['todo_app'], using (user_id = COALESCE"],
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_guard_names_a_weakened_protection(
    breakage: str, admin: psycopg.Connection[Any], migration_connection: Connection
) -> None:
    admin.execute(NOTE)
    run_op(migration_connection, enable_owner_rls, "note")
    assert rls_offenders(admin) == []  # positive control
    statement, expected = BREAKAGES[breakage]
    admin.execute(statement)
    owner = canonical_predicate(admin)
    found = rls_offenders(admin)
    assert [table for table, _ in found] == ["note"] * len(expected), found
    for (_, problem), start in zip(found, expected, strict=True):
        assert problem.startswith(start.format(owner=owner)), (problem, start)


def test_allowlisted_better_auth_tables_are_not_guarded(admin: psycopg.Connection[Any]) -> None:
    admin.execute('create table public.session (id text primary key, "userId" text not null)')
    admin.execute("create table public.session_log (id text primary key)")
    # Positive control: the unlisted look-alike is reported; the allowlisted name is not.
    assert {table for table, _ in rls_offenders(admin)} == {"session_log"}


# --- enable_owner_rls / disable_owner_rls --------------------------------------------------


def test_disable_owner_rls_restores_the_table_exactly_as_it_was(
    admin: psycopg.Connection[Any], migration_connection: Connection
) -> None:
    admin.execute(NOTE)
    before = snapshot(admin)
    run_op(migration_connection, enable_owner_rls, "note")
    assert snapshot(admin) != before  # positive control
    run_op(migration_connection, disable_owner_rls, "note")
    assert snapshot(admin) == before


@pytest.mark.parametrize(
    ("ddl", "missing"),
    [
        ("create table public.note (id int)", "user_id, updated_at"),
        ("create table public.note (user_id uuid, updated_at timestamptz)", "user_id"),
        ("create table public.note (user_id text, updated_at timestamp)", "updated_at"),
    ],
)
def test_enable_owner_rls_refuses_a_table_without_an_owner_column_and_changes_nothing(
    ddl: str, missing: str, admin: psycopg.Connection[Any], migration_connection: Connection
) -> None:
    admin.execute(ddl)
    before = snapshot(admin)
    with pytest.raises(Exception, match=f"lacks column.*: {missing}") as raised:
        run_op(migration_connection, enable_owner_rls, "note")
    assert isinstance(getattr(raised.value, "orig", None), psycopg.errors.RaiseException)
    migration_connection.rollback()
    assert snapshot(admin) == before


def test_enable_owner_rls_refuses_a_case_insensitive_owner_column_naming_the_fix(
    admin: psycopg.Connection[Any], migration_connection: Connection
) -> None:
    admin.execute(
        "create collation public.ci (provider = icu, locale = 'und-u-ks-level2',"
        " deterministic = false)"
    )
    admin.execute(
        'create table public.note (user_id text collate public.ci references public."user" (id),'
        " updated_at timestamptz)"
    )
    before = snapshot(admin)
    with pytest.raises(
        Exception, match=r"user_id of public\.note has a nondeterministic"
    ) as raised:
        run_op(migration_connection, enable_owner_rls, "note")
    error = getattr(raised.value, "orig", None)
    assert isinstance(error, psycopg.errors.RaiseException)
    fix = 'alter table public.note alter column user_id type text collate "default";'
    assert error.diag.message_hint is not None and fix in error.diag.message_hint
    migration_connection.rollback()
    assert snapshot(admin) == before  # nothing half-written
    # The fix it names works, and then the helper protects the table.
    admin.execute(fix)
    run_op(migration_connection, enable_owner_rls, "note")
    assert rls_offenders(admin) == []


def test_enable_owner_rls_without_trigger_accepts_a_table_without_updated_at(
    admin: psycopg.Connection[Any], migration_connection: Connection
) -> None:
    admin.execute('create table public.note (user_id text references public."user" (id))')
    run_op(migration_connection, enable_owner_rls, "note", updated_at=False)
    assert rls_offenders(admin) == []
    triggers = (
        "select count(*) from pg_trigger where tgrelid = 'note'::regclass and not tgisinternal"
    )
    assert admin.execute(triggers).fetchone() == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": "public.note"}, "not a plain SQL identifier"),
        ({"table": "note; drop table task"}, "not a plain SQL identifier"),
        ({"table": ""}, "not a plain SQL identifier"),
        ({"table": "1note"}, "not a plain SQL identifier"),
        ({"table": "n" * 49}, "at most 48 are allowed"),
        ({"table": 7}, "table must be a str, not int"),
        ({"table": "note", "schema": 'a"b'}, "schema 'a\"b' is not a plain SQL identifier"),
        ({"table": "note", "app_role": "todo app"}, "app_role 'todo app' is not a plain"),
        ({"table": "note", "updated_at": "yes"}, "updated_at must be True or False"),
    ],
)
def test_helpers_refuse_bad_arguments_naming_the_fix(kwargs: dict[str, Any], message: str) -> None:
    recorder = Recorder()
    for helper in (enable_owner_rls, disable_owner_rls):
        with pytest.raises(OwnerRlsArgumentError, match=message.replace("'", ".")):
            helper(recorder, **kwargs)
    assert recorder.statements == []  # nothing emitted: the migration stops before any SQL
    enable_owner_rls(recorder, "n" * 48)  # positive control: the longest allowed name works
    assert recorder.statements[-1].startswith(f"create trigger {'n' * 48}_set_updated_at ")


def test_reserved_word_names_are_quoted() -> None:
    recorder = Recorder()
    enable_owner_rls(recorder, "order", schema="select", app_role="user")
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
    enable_owner_rls(helper, "user_preference")
    assert len(op.statements) == 8  # positive control: the core protection was recorded
    # The helper adds only its precondition check in front.
    assert helper.statements[0].startswith("do $$")
    assert helper.statements[1:] == op.statements


# Frozen: migrations call these helpers, so already-applied revisions depend on this text.
# A failure here means the emitted SQL changed; put the new behaviour in a new function.
# The one allowed kind of change is to the precondition DO block (statement 1), which only
# raises or passes and creates nothing: what a migration leaves behind for a valid table is
# unchanged, and that resulting schema is what the frozen-history rule protects (the other
# statements are still pinned, equal to the core revision's, by the test above). Changed once:
# 2026-12 (review 2, finding 5), refuse a user_id with a nondeterministic collation
# (was fcde56d2d73d87e495bc600c78e52a26e559f918541a7ab23b0ea691bbafea19).
PINNED_SHA256 = {
    "enable_owner_rls": "b3320781ff37b12102696f6259550aa176403858b1cf9ea70d87779229f0cf47",
    "disable_owner_rls": "88bf19dfcfbf7c5acdecd3e929f6f8a2580803fa537f974f148b69159d88919d",
}


@pytest.mark.parametrize("helper", [enable_owner_rls, disable_owner_rls], ids=PINNED_SHA256)
def test_emitted_sql_for_user_preference_is_pinned(helper: Any) -> None:
    recorder = Recorder()
    helper(recorder, "user_preference")
    digest = hashlib.sha256("\n;\n".join(recorder.statements).encode()).hexdigest()
    assert digest == PINNED_SHA256[helper.__name__], "\n;\n".join(recorder.statements)
