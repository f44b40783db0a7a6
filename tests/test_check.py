"""`todo-rls check`: the migrated schema is clean; each hole, made on purpose, is found alone."""

import json
import socket
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.check import audit
from todo_rls.check.command import audit_with
from todo_rls.check.predicate import Shape, has_bare_call, shape
from todo_rls.check.rules import RULES
from todo_rls.cli import build_parser, main
from todo_rls.owner_rls import FORGEABLE_OWNER_MATCHES, OWNER_MATCHES, OWNER_MATCHES_BARE

from catalog import OUR_TABLES
from fix_db import APP_LOGIN, OWNED_TABLES, url_as
from fix_rolled import Rolled, with_login_role
from fix_server import PgServer

# Each case builds its flaw in one transaction on the shared database and audits it there, as
# the app's login, with options parsed by the CLI's own parser; the transaction is rolled back
# after the test (fix_rolled's db), so no case needs a copy of the template of its own. One case
# commits its flaw on its own copy and runs the real CLI over it, end to end.

CANONICAL = OWNER_MATCHES
Found = list[tuple[str, str]]  # (rule id, object) of each finding, in report order
Breaks = Callable[..., Found]


@pytest.fixture
def app_login_url(pg_server: PgServer, dbname: str) -> str:
    """The test database as the app's login role: the check needs no more than that."""
    return url_as(pg_server, dbname, APP_LOGIN)


def run_check(
    capsys: pytest.CaptureFixture[str], url: str, *options: str
) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON report of `todo-rls check` through the CLI, over url."""
    code = main(["check", "--url", url, "--json", *with_login_role(options)])
    return code, json.loads(capsys.readouterr().out)


def found(report: dict[str, Any]) -> Found:
    return [(f["rule"], f["object"]) for f in report["findings"]]


@pytest.fixture
def breaks(db: Rolled) -> Breaks:
    """breaks(statement, *options): check it is clean, run statement, return the findings."""

    def apply(statement: str, *options: str) -> Found:
        code, report = db.check(*options)
        assert (code, found(report)) == (0, []), "positive control: clean before the break"
        db.run(statement)
        code, report = db.check(*options)
        assert code == 1, report
        return found(report)

    return apply


# --- the clean schema, the report ----------------------------------------------------------


@pytest.mark.parametrize("as_app", [True, False], ids=["as-app-login", "as-superuser"])
def test_migrated_schema_has_no_finding(
    capsys: pytest.CaptureFixture[str], pg_server: PgServer, dbname: str, as_app: bool
) -> None:
    url = url_as(pg_server, dbname, APP_LOGIN if as_app else None)
    code, report = run_check(capsys, url)
    assert (code, report["findings"]) == (0, [])
    assert sorted(report["summary"]["tables"]) == [f"public.{t}" for t in OUR_TABLES]


def test_version_tables_the_app_cannot_use_are_no_finding(db: Rolled) -> None:
    # An app's own Alembic chain beside ours: alembic_version, or a name of its choosing.
    assert db.check()[0] == 0  # ours, todo_rls_alembic_version, is none
    for name in ("alembic_version", "myapp_schema_version"):
        db.run(
            sql.SQL("create table public.{} (version_num varchar(32) primary key)").format(
                sql.Identifier(name)
            )
        )
    assert db.check()[0] == 0
    # Positive controls: a look-alike with more than version_num is a table like any other,
    # and a version table the app's roles can read is reported.
    db.run("alter table public.myapp_schema_version add column note text")
    db.run("grant select on public.alembic_version to todo_app")
    assert found(db.check()[1]) == [
        ("RLS001", "public.myapp_schema_version"),
        ("READ001", "public.alembic_version"),
    ]


def test_json_report_has_database_findings_and_summary(db: Rolled, dbname: str) -> None:
    db.run("alter table task no force row level security")
    code, report = db.check()
    assert code == 1
    assert set(report) == {"database", "findings", "summary"}
    assert report["database"] == dbname
    assert report["findings"] == [
        {
            "object": "public.task",
            "rule": "RLS002",
            "severity": "error",
            "message": report["findings"][0]["message"],
            "fix": "alter table public.task force row level security;",
        }
    ]
    assert "owner" in report["findings"][0]["message"]
    assert report["summary"] == {
        "findings": 1,
        "errors": 1,
        "warnings": 0,
        "rules": len(RULES),
        "tables": report["summary"]["tables"],
        "schema": "public",
        "app_role": "todo_app",
        "login_roles": [APP_LOGIN],
    }


@pytest.mark.own_database  # commits its break: the CLI reads it over a connection of its own
def test_a_committed_break_is_found_through_the_cli(
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    app_login_url: str,
    db: Rolled,
) -> None:
    admin.execute("alter table message no force row level security")
    admin.execute("drop policy task_delete on task")
    assert main(["check", "--url", app_login_url, "--login-role", APP_LOGIN]) == 1
    out = capsys.readouterr().out
    message_block = out.index("\npublic.message\n")
    task_block = out.index("\npublic.task\n")
    assert message_block < out.index("RLS002") < task_block < out.index("POL001")
    assert "fix:    create policy task_delete on public.task for delete to todo_app using" in out
    assert f"\n2 findings (1 error, 1 warning); {len(RULES)} rules over " in out
    # What the other cases rely on: auditing in a transaction reports what the CLI does.
    assert db.report() == (1, out.removesuffix("\n"))


def test_audit_with_refuses_an_autocommit_connection(admin: psycopg.Connection[Any]) -> None:
    # Its search_path pin is transaction-local: on autocommit it would be gone before the audit.
    with pytest.raises(ValueError, match="needs a transaction"):
        audit_with(admin, build_parser().parse_args(["check"]))


def test_the_rule_table_lists_each_rule_once() -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids)) == 31
    assert {rule.severity for rule in RULES} == {"error", "warning"}


# --- tables --------------------------------------------------------------------------------


UNINDEXED = "IDX001"  # a new owned table has no index on user_id either


@pytest.mark.parametrize(
    ("statement", "options", "expected"),
    [
        ("create table public.scratch_note (id int, user_id text)", (), "public.scratch_note"),
        ("create table public.lookup (id int)", (), "public.lookup"),
        # The allowlist is for tables without owners: a user_id column is checked regardless.
        (
            "create table public.scratch_note (id int, user_id text)",
            ("--allow", "scratch_note"),
            "public.scratch_note",
        ),
        (
            "create schema other; create table other.scratch_note (user_id text)",
            (),
            "other.scratch_note",
        ),
        ("alter table conversation disable row level security", (), "public.conversation"),
    ],
    ids=["user_id-table", "other-table", "allowlisted-user_id-table", "other-schema", "disabled"],
)
def test_table_without_rls_is_found(
    breaks: Breaks, statement: str, options: tuple[str, ...], expected: str
) -> None:
    new_owned_table = "user_id" in statement
    assert breaks(statement, *options) == [("RLS001", expected)] + (
        [(UNINDEXED, expected)] if new_owned_table else []
    )


# Every owned table of ours has user_id leading its primary key, which serves the policies'
# filter; a downstream table keyed on id alone is what the rule is for. So each case re-keys
# task on (id, user_id) and drops its user_id indexes first.
_TASK_KEYED_ON_ID = (
    "alter table task drop constraint pk_task, add constraint pk_task primary key (id, user_id);"
    " drop index ix_task_user_id_completed_created_at_id, ix_task_user_id_created_at_id;"
)


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        (_TASK_KEYED_ON_ID, "public.task"),
        # A partial index serves only the queries that match its predicate.
        (
            _TASK_KEYED_ON_ID
            + " create index scratch_partial on task (user_id) where title is not null",
            "public.task",
        ),
        # user_id second in the index: the policies' filter cannot use it alone.
        (
            _TASK_KEYED_ON_ID + " create index scratch_second on task (created_at, user_id)",
            "public.task",
        ),
    ],
    ids=["no-index", "partial", "user_id-second"],
)
def test_owned_table_without_an_index_leading_with_user_id_is_found(
    breaks: Breaks, statement: str, table: str
) -> None:
    assert breaks(statement) == [(UNINDEXED, table)]


def test_allowlisted_table_without_user_id_is_not_found(db: Rolled) -> None:
    # Readable by the app: --allow exempts a table you name from READ001 too.
    db.run("create table public.lookup (id int); grant select on public.lookup to todo_app")
    assert db.check()[0] == 1  # positive control: found without --allow
    assert db.check("--allow", "lookup")[0] == 0


def test_table_not_forced_is_found(breaks: Breaks) -> None:
    assert breaks("alter table task no force row level security") == [("RLS002", "public.task")]


def test_a_search_path_the_break_sets_does_not_fool_the_audit(breaks: Breaks) -> None:
    # With todo_rls on it, PostgreSQL prints the policies' verifier call unqualified (no longer
    # canonical): the audit pins its own search_path for its queries (database_audit.audit).
    statement = (
        "set local search_path = todo_rls, public; alter table task no force row level security"
    )
    assert breaks(statement) == [("RLS002", "public.task")]


# --- policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["task_select", "task_insert", "task_update", "task_delete"])
def test_command_without_policy_is_found(breaks: Breaks, policy: str) -> None:
    assert breaks(f"drop policy {policy} on task") == [("POL001", "public.task")]


def test_policy_for_public_is_found(breaks: Breaks) -> None:
    statement = f"create policy task_read on task for select using ({CANONICAL})"
    assert breaks(statement) == [("POL002", "public.task")]


FAIL_OPEN = {
    "true": "true",
    "not-null": "user_id is not null",
    "coalesce-wildcard": "user_id = (select coalesce("
    "nullif(pg_catalog.current_setting('app.user_id', true), ''), user_id))",
    "or-unset": f"{CANONICAL} or (select pg_catalog.current_setting('app.user_id', true)) is null",
    "no-nullif": "user_id = (select pg_catalog.current_setting('app.user_id', true))",
    "one-argument": "user_id = (select nullif(pg_catalog.current_setting('app.user_id'), ''))",
    "other-setting": "user_id = (select nullif(pg_catalog.current_setting('app.uid', true), ''))",
    # Same first character = same owner: the canonical tokens wrapped in narrowing casts.
    "char-prefix": 'user_id::"char" = (select nullif('
    "pg_catalog.current_setting('app.user_id', true), ''))::\"char\"",
    "varchar-1": "user_id::varchar(1) = (select nullif("
    "pg_catalog.current_setting('app.user_id', true), ''))::varchar(1)",
    "cast-inside-typmod": "user_id = (select nullif("
    "pg_catalog.current_setting('app.user_id', true), '')::varchar(1))",
    "name-cast": "user_id::name = (select nullif("
    "pg_catalog.current_setting('app.user_id', true), '')::name)",
}


@pytest.mark.parametrize("predicate", FAIL_OPEN.values(), ids=FAIL_OPEN.keys())
def test_fail_open_using_is_found(breaks: Breaks, predicate: str) -> None:
    statement = f"alter policy task_select on task using ({predicate})"
    assert breaks(statement) == [("POL003", "public.task")]


NOTE_POLICIES = "; ".join(
    f"create policy scratch_note_{command} on public.scratch_note for {command} to todo_app"
    f" {clauses}"
    for command, clauses in (
        ("select", f"using ({CANONICAL})"),
        ("insert", f"with check ({CANONICAL})"),
        ("update", f"using ({CANONICAL}) with check ({CANONICAL})"),
        ("delete", f"using ({CANONICAL})"),
    )
)


@pytest.mark.usefixtures("icu")
def test_owner_column_with_a_case_insensitive_collation_is_found(
    breaks: Breaks, db: Rolled
) -> None:
    # The policy text is canonical; the column's collation makes 'ALICE' equal 'alice'.
    statement = (
        "create collation public.ci (provider = icu, locale = 'und-u-ks-level2', "
        "deterministic = false); "
        "create table public.scratch_note (id int, user_id text collate public.ci); "
        "alter table public.scratch_note alter column user_id set statistics 0; "  # STAT001's
        "create index on public.scratch_note (user_id); "
        "alter table public.scratch_note enable row level security, force row level security; "
        "grant select, insert, update, delete on public.scratch_note to todo_app; " + NOTE_POLICIES
    )
    findings = breaks(statement)
    assert set(findings) == {("POL003", "public.scratch_note")}
    assert len(findings) == 5  # every clause of the four policies

    # The fix is the column's collation, not the (already canonical) policy text...
    _, report = db.check()
    alter = 'alter table public.scratch_note alter column user_id type text collate "default";'
    assert {f["fix"].split(" (")[0] for f in report["findings"]} == {alter}
    # ...and it works, done the way the fix says (PostgreSQL refuses it while policies exist).
    for command in ("select", "insert", "update", "delete"):
        db.run(f"drop policy scratch_note_{command} on public.scratch_note")
    db.run(alter)
    db.run(NOTE_POLICIES)
    code, report = db.check()
    assert (code, found(report)) == (0, [])


def test_fail_open_with_check_is_found(breaks: Breaks) -> None:
    assert breaks("alter policy message_insert on message with check (true)") == [
        ("POL003", "public.message")
    ]


def test_update_without_with_check_is_found(breaks: Breaks) -> None:
    statement = (
        "drop policy conversation_update on conversation; create policy conversation_update "
        f"on conversation for update to todo_app using ({CANONICAL})"
    )
    assert breaks(statement) == [("POL004", "public.conversation")]


def test_verifier_outside_a_sub_select_is_found(breaks: Breaks) -> None:
    bare = OWNER_MATCHES_BARE
    statement = f"alter policy task_delete on task using ({bare})"
    assert breaks(statement) == [("POL005", "public.task")]


def test_leaky_function_in_a_restrictive_policy_is_found(breaks: Breaks) -> None:
    # Restrictive policies are ANDed in, but a function in one sees every row first.
    statement = (
        "create function public.audit_row(owner text, title text) returns boolean "
        "language plpgsql as $$ begin raise notice '% %', owner, title; return true; end $$; "
        "create policy task_audit on task as restrictive for select to todo_app "
        "using (public.audit_row(user_id, title))"
    )
    assert breaks(statement) == [("POL006", "public.task")]


def test_leaky_operator_in_a_policy_is_found(breaks: Breaks) -> None:
    statement = (
        "create function public.peek(a text, b text) returns boolean language plpgsql "
        "as $$ begin raise notice '%', a; return a = b; end $$; "
        "create operator public.=== (function = public.peek, leftarg = text, rightarg = text); "
        "create policy task_peek on task as restrictive for select to todo_app "
        "using (title operator(public.===) title)"
    )
    assert breaks(statement) == [("POL006", "public.task")]


# --- roles ---------------------------------------------------------------------------------


def app_member(db: Rolled) -> str:
    """A login role of this transaction, a member of todo_app."""
    member = db.role("member", "login")
    db.run(sql.SQL("grant todo_app to {}").format(sql.Identifier(member)))
    return member


@pytest.mark.parametrize("attribute", ["bypassrls", "superuser"])
def test_login_role_that_bypasses_rls_is_found(breaks: Breaks, db: Rolled, attribute: str) -> None:
    member = app_member(db)
    alter = f'alter role "{member}" {attribute}'
    assert breaks(alter, "--login-role", member) == [("ROLE001", f"role {member}")]


@pytest.mark.parametrize("attribute", ["bypassrls", "superuser"])
def test_login_role_member_of_a_bypassing_role_is_found(
    breaks: Breaks, db: Rolled, attribute: str
) -> None:
    # Neon's console roles: no attribute of their own, but members of neon_superuser.
    bypass = db.role("bypass", "nologin", attribute)
    member = app_member(db)
    grant = f'grant "{bypass}" to "{member}"'
    assert breaks(grant, "--login-role", member) == [("ROLE001", f"role {member}")]


@pytest.mark.parametrize("through_a_group", [False, True], ids=["itself", "through a group"])
def test_login_role_with_createrole_is_found_and_the_fix_works(
    db: Rolled, through_a_group: bool
) -> None:
    # On PostgreSQL 15 a CREATEROLE role can grant itself a BYPASSRLS role or a table owner.
    member = app_member(db)
    code, report = db.check("--login-role", member)
    assert (code, found(report)) == (0, []), "positive control: a plain member is clean"

    holder = db.role("creator", "nologin", "createrole") if through_a_group else member
    if through_a_group:
        db.run(sql.SQL("grant {} to {}").format(sql.Identifier(holder), sql.Identifier(member)))
    else:
        db.run(sql.SQL("alter role {} createrole").format(sql.Identifier(member)))
    code, report = db.check("--login-role", member)
    assert (code, found(report)) == (1, [("ROLE001", f"role {member}")])
    fix = report["findings"][0]["fix"]
    statement = (
        f"revoke {holder} from {member}"
        if through_a_group
        else (f"alter role {member} nocreaterole")
    )
    assert fix.startswith(f"{statement};"), fix
    assert "CREATEROLE" in report["findings"][0]["message"]

    db.run(statement)  # the fix it names is enough
    code, report = db.check("--login-role", member)
    assert (code, found(report)) == (0, [])


def test_login_members_of_the_app_role_are_checked_by_default(db: Rolled) -> None:
    member, outsider = db.role("member", "login"), db.role("outsider", "login")
    middle = db.role("middle")  # nologin, in between: membership counts through it
    for grantee, role in ((middle, "todo_app"), (member, middle)):
        db.run(sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(grantee)))
    ctx, _ = audit(db.conn)  # the library's call: no --login-role, every LOGIN member
    names = {role.name for role in ctx.login_roles}
    assert {APP_LOGIN, member} <= names
    assert not {outsider, middle, "postgres"} & names


def own_tables(db: Rolled) -> str:
    """A login role of this transaction that owns the owned tables and is no member of
    todo_app: fix_db's table_owner, rolled back with the rest."""
    owner = db.role("owner", "login")
    for table in OWNED_TABLES:
        db.run(sql.SQL("alter table {} owner to {}").format(*map(sql.Identifier, (table, owner))))
    return owner


def test_login_role_that_owns_tables_is_found(db: Rolled) -> None:
    table_owner = own_tables(db)
    # Owning the tables is fine for a migration role the app never logs in as...
    code, report = db.check()
    assert (code, found(report)) == (0, [])
    # ...and a hole for the role the app logs in as.
    code, report = db.check("--login-role", table_owner)
    expected = sorted(("ROLE002", f"public.{table}") for table in OWNED_TABLES)
    assert (code, sorted(found(report))) == (1, expected)


@pytest.mark.parametrize("privilege", ["truncate", "trigger", "references"])
def test_app_role_with_dangerous_privilege_is_found(breaks: Breaks, privilege: str) -> None:
    statement = f"grant {privilege} on message to todo_app"
    assert breaks(statement) == [("ROLE003", "public.message")]


def test_column_level_references_is_found(breaks: Breaks) -> None:
    statement = "grant references (id, user_id) on task to todo_app"
    assert breaks(statement) == [("ROLE003", "public.task")]


def test_create_on_the_app_schema_is_found(breaks: Breaks) -> None:
    assert breaks("grant create on schema public to todo_app") == [("ROLE003", "schema public")]


def test_dangerous_privilege_of_a_login_role_alone_is_found(breaks: Breaks, db: Rolled) -> None:
    member = app_member(db)
    options = ("--login-role", member, "--login-role", APP_LOGIN)
    findings = breaks(f'grant truncate on task to "{member}"', *options)
    assert findings == [("ROLE003", "public.task")]


# --- foreign keys, functions, views --------------------------------------------------------


def test_foreign_key_without_user_id_is_found(breaks: Breaks) -> None:
    # conversation's key is (user_id, id): id alone needs a unique constraint to be referenced.
    statement = (
        "alter table conversation add constraint uq_conversation_id unique (id); "
        "alter table message drop constraint fk_message_conversation_id_user_id_conversation, "
        "add constraint fk_message_conversation_id_conversation "
        "foreign key (conversation_id) references conversation (id)"
    )
    assert breaks(statement) == [("FK001", "public.message")]


def test_security_definer_function_without_search_path_is_found(breaks: Breaks) -> None:
    statement = (
        "create function public.count_tasks(who text) returns bigint language sql "
        "security definer as $$ select count(*) from public.task where user_id = who $$"
    )
    # Owned by the test's superuser and executable by PUBLIC: FN002 too.
    function = "function public.count_tasks(who text)"
    assert breaks(statement) == [("FN001", function), ("FN002", function)]


def test_view_without_security_invoker_is_found(breaks: Breaks, db: Rolled) -> None:
    statement = "create view public.open_task as select * from task where not completed"
    assert breaks(statement) == [("VIEW001", "public.open_task")]
    _, report = db.check()
    fix = (
        "alter view public.open_task set (security_invoker = true);"
        if db.conn.info.server_version >= 150000
        else "drop view public.open_task; (PostgreSQL 14 has no security_invoker: query the table)"
    )
    assert [f["fix"] for f in report["findings"]] == [fix]


DEFINER = (
    "create function {name}() returns table(user_id text, title text) language sql "
    "security definer set search_path = pg_catalog as 'select user_id, title from public.task'"
)


@pytest.mark.parametrize("name", ["public.all_titles", "api.all_titles"])
def test_definer_function_of_a_superuser_the_app_can_run_is_found(
    breaks: Breaks, name: str
) -> None:
    # Owned by the test's superuser and executable by PUBLIC, as every new function is.
    statement = "create schema api; grant usage on schema api to todo_app; "
    assert breaks(statement + DEFINER.format(name=name)) == [("FN002", f"function {name}()")]


def test_definer_function_of_a_table_owner_is_found(breaks: Breaks, db: Rolled) -> None:
    table_owner = own_tables(db)
    statement = f"{DEFINER.format(name='public.all_titles')}; "
    statement += f'alter function public.all_titles() owner to "{table_owner}"'
    assert breaks(statement) == [("FN002", "function public.all_titles()")]


def test_definer_function_of_a_plain_role_is_not_found(db: Rolled) -> None:
    plain = db.role("plain")  # no bypass, owns no protected table: policies bind it
    db.run(DEFINER.format(name="public.all_titles"))
    assert db.check()[0] == 1  # positive control: the superuser's is found
    db.run(sql.SQL("alter function public.all_titles() owner to {}").format(sql.Identifier(plain)))
    code, report = db.check()
    assert (code, found(report)) == (0, [])


READABLE = {
    "materialized-view": (
        "create materialized view public.task_titles as select user_id, title from task; "
        "grant select on public.task_titles to todo_app",
        "public.task_titles",
    ),
    "view-outside-the-schema": (
        "create schema api; grant usage on schema api to todo_app; "
        "create view api.tasks as select * from public.task; grant select on api.tasks to todo_app",
        "api.tasks",
    ),
    "better-auth-table": ('grant select on public."user" to todo_app', 'public."user"'),
    "column-grant": ('grant select ("email") on public."user" to todo_app', 'public."user"'),
    "write-grant": ('grant insert on public."user" to todo_app', 'public."user"'),
    "through-public": (
        "grant select on public.todo_rls_alembic_version to public",
        "public.todo_rls_alembic_version",
    ),
}


@pytest.mark.parametrize(("statement", "relation"), READABLE.values(), ids=READABLE.keys())
def test_relation_the_app_can_read_past_rls_is_found(
    breaks: Breaks, statement: str, relation: str
) -> None:
    assert breaks(statement) == [("READ001", relation)]


def test_a_readable_views_fix_is_one_the_server_can_run(breaks: Breaks, db: Rolled) -> None:
    statement, relation = READABLE["view-outside-the-schema"]
    assert breaks(statement) == [("READ001", relation)]
    _, report = db.check()
    view_fix = (
        f"alter view {relation} set (security_invoker = true);"
        if db.conn.info.server_version >= 150000
        else "drop it, PostgreSQL 14 has no security_invoker;"
    )
    assert [f["fix"] for f in report["findings"]] == [
        f"revoke all on {relation} from todo_app, public; (or for a view: {view_fix} for a "
        "table of your own without owners: --allow it)"
    ]


def test_database_default_for_the_user_setting_is_found(breaks: Breaks, dbname: str) -> None:
    statement = f"alter database \"{dbname}\" set app.user_id = 'aliceID'"
    assert breaks(statement) == [("SET001", f"database {dbname}")]


def test_login_role_default_for_the_user_setting_is_found(
    breaks: Breaks, db: Rolled, dbname: str
) -> None:
    member = app_member(db)
    statement = f'alter role "{member}" in database "{dbname}" set app.user_id = \'x\''
    assert breaks(statement, "--login-role", member) == [("SET001", f"role {member}")]


@pytest.mark.parametrize("setting", ["search_path = public, pg_catalog", "row_security = off"])
def test_database_default_for_search_path_or_row_security_is_found(
    breaks: Breaks, dbname: str, setting: str
) -> None:
    statement = f'alter database "{dbname}" set {setting}'
    assert breaks(statement) == [("SET002", f"database {dbname}")]


# --- the verified identity ------------------------------------------------------------------


def test_forgeable_predicate_is_found(breaks: Breaks) -> None:
    statement = f"alter policy task_select on task using ({FORGEABLE_OWNER_MATCHES})"
    assert breaks(statement) == [("POL007", "public.task")]


def test_login_role_default_is_found(breaks: Breaks, dbname: str) -> None:
    # What SQL injected into the app can do to every later connection of its login.
    statement = (
        f'alter role {APP_LOGIN} in database "{dbname}" set default_transaction_read_only = on'
    )
    assert breaks(statement) == [("SET003", f"role {APP_LOGIN}")]


# A table the app can read or write past RLS is also READ001's.
READ_PAST_RLS = [("READ001", "todo_rls.signing_key")]


@pytest.mark.parametrize(
    ("statement", "also"),
    [
        ("grant select on todo_rls.signing_key to todo_app", READ_PAST_RLS),
        ("grant insert on todo_rls.signing_key to todo_app", READ_PAST_RLS),
        ("grant execute on function todo_rls.signing_key_ring() to todo_app", []),
    ],
    ids=["read-keys", "install-a-key", "run-the-key-ring"],
)
def test_app_role_that_could_sign_is_found(
    breaks: Breaks, statement: str, also: list[tuple[str, str]]
) -> None:
    # todo_app holds it, and the login role through todo_app: both could sign any context.
    expected = [("IDN002", "role todo_app"), ("IDN002", f"role {APP_LOGIN}"), *also]
    assert sorted(breaks(statement)) == sorted(expected)


def test_key_in_a_function_body_is_found(breaks: Breaks) -> None:
    statement = (
        "create function public.sign_with() returns text language sql immutable"
        f" as $$ select '{'ab' * 32}'::text $$"
    )
    assert breaks(statement) == [("IDN003", "public.sign_with()")]


@pytest.mark.parametrize(
    ("statement", "extra"),
    [
        ("alter function todo_rls.current_user_id() security invoker", []),
        ("alter function todo_rls.current_user_id() reset search_path", []),
        # A superuser owner: also a SECURITY DEFINER function of a bypassing role (FN002).
        (
            "alter function todo_rls.current_user_id() owner to postgres",
            [("FN002", "function todo_rls.current_user_id()")],
        ),
    ],
    ids=["invoker", "no-search-path", "superuser-owner"],
)
def test_unsound_verifier_is_found(
    breaks: Breaks, statement: str, extra: list[tuple[str, str]]
) -> None:
    expected = [("IDN001", "todo_rls.current_user_id()"), *extra]
    assert sorted(breaks(statement)) == sorted(expected)


def test_no_active_key_is_found(db: Rolled) -> None:
    # As the superuser: the app login may not read the keys.
    code, report = db.check(login=None)
    assert (code, found(report)) == (0, []), "positive control: the run's key is active"
    db.run("update todo_rls.signing_key set retire_at = now() - interval '1 second'")
    code, report = db.check(login=None)
    assert (code, found(report)) == (1, [("IDN004", "todo_rls.signing_key")])


def test_large_object_of_the_app_login_is_found(db: Rolled) -> None:
    code, report = db.check()
    assert (code, found(report)) == (0, []), "positive control: clean before the break"
    # Made by the app login itself, as SQL injected into the app would.
    db.run(
        sql.SQL(
            "set local session authorization {}; select pg_catalog.lo_from_bytea(0, 'copied rows');"
            " reset session authorization"
        ).format(sql.Identifier(APP_LOGIN))
    )
    code, report = db.check()
    assert (code, found(report)) == (1, [("LO001", f"role {APP_LOGIN}")])


SAFE_OBJECTS = {
    "definer-the-app-cannot-run": "create function public.f() returns int language sql "
    "security definer set search_path = '' as $$ select 1 $$; "
    "revoke execute on function public.f() from public",
    "invoker-view": "create view public.open_task with (security_invoker = true) as "
    "select * from task where not completed",
    "restrictive-extra-policy": "create policy task_not_blank on task as restrictive "
    "for select to todo_app using (title <> '')",
    "text-cast-inside": "alter policy task_select on task using (user_id = "
    "(select todo_rls.current_user_id()::text))",
    "invoker-view-outside-the-schema": "create schema api; grant usage on schema api to todo_app; "
    "create view api.tasks with (security_invoker = true) as select * from public.task; "
    "grant select on api.tasks to todo_app",
    "leakproof-function-in-policy": "create function public.same(a text, b text) returns boolean "
    "language sql immutable leakproof as 'select a = b'; create policy task_same on task "
    "as restrictive for select to todo_app using (public.same(title, title))",
}


@pytest.mark.parametrize("statement", SAFE_OBJECTS.values(), ids=SAFE_OBJECTS.keys())
def test_safe_variants_give_no_finding(db: Rolled, statement: str) -> None:
    if "security_invoker" in statement and db.conn.info.server_version < 150000:
        pytest.skip("security_invoker views are PostgreSQL 15+: on 14 every view is unsafe")
    db.run(statement)
    code, report = db.check()
    assert (code, found(report)) == (0, [])


def test_unrelated_database_default_is_not_found(db: Rolled, dbname: str) -> None:
    db.run(f"alter database \"{dbname}\" set work_mem = '8MB'")
    code, report = db.check()
    assert (code, found(report)) == (0, [])


# --- predicates, without a database --------------------------------------------------------

PRINTED = "(user_id = ( SELECT todo_rls.current_user_id() AS current_user_id))"
PRINTED_FORGEABLE = "(user_id = ( SELECT NULLIF(current_setting('app.user_id'::text, true), ''::text) AS \"nullif\"))"  # noqa: E501


def test_canonical_predicate_as_postgresql_prints_it() -> None:
    assert shape(PRINTED) is Shape.CANONICAL
    assert not has_bare_call(PRINTED)


def test_the_setting_predicate_of_before_the_verified_identity_is_forgeable() -> None:
    assert shape(PRINTED_FORGEABLE) is Shape.FORGEABLE
    assert shape(PRINTED_FORGEABLE.replace("( SELECT ", "(", 1)) is Shape.FORGEABLE


CASTS = {
    "char": '(user_id)::"char"',
    "varchar-typmod": "(user_id)::character varying(1)",
    "text-typmod": "(user_id)::text(1)",
    "text-array": "(user_id)::text[]",
    "bpchar": "(user_id)::bpchar",
    "name": "(user_id)::name",
    "qualified-char": '(user_id)::pg_catalog."char"',
}


@pytest.mark.parametrize("column", CASTS.values(), ids=CASTS.keys())
def test_a_cast_other_than_text_is_not_canonical(column: str) -> None:
    assert shape(PRINTED.replace("(user_id", f"({column}", 1)) is Shape.OTHER


def test_a_text_cast_is_canonical() -> None:
    qualified = PRINTED.replace("(user_id", "((user_id)::pg_catalog.text", 1)
    assert shape(qualified) is Shape.CANONICAL


def test_a_look_alike_function_from_another_schema_is_not_canonical() -> None:
    fake = PRINTED.replace("todo_rls.current_user_id", "public.current_user_id")
    assert shape(fake) is Shape.OTHER
    fake_setting = PRINTED_FORGEABLE.replace("current_setting", "public.current_setting")
    assert shape(fake_setting) is Shape.OTHER


# --- exit 2: cannot connect, used wrongly --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("todo-rls: error: ")
    return err


@pytest.mark.parametrize(
    "url",
    ["postgresql://nobody@127.0.0.1:{port}/nothing", "mysql://root@127.0.0.1/app"],
    ids=["unreachable", "not-postgres"],
)
def test_cannot_connect_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert main(["check", "--url", url.format(port=_closed_port())]) == 2
    assert_one_line_error(capsys)


def test_unknown_app_role_exits_2(capsys: pytest.CaptureFixture[str], app_login_url: str) -> None:
    assert main(["check", "--url", app_login_url, "--app-role", "no_such_role"]) == 2
    assert "--app-role" in assert_one_line_error(capsys)


def test_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
