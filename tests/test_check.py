"""`todo-rls check`: the migrated schema is clean; each hole, made on purpose, is found alone."""

import json
import socket
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.check import audit, connect
from todo_rls.check.predicate import Shape, has_bare_setting, shape
from todo_rls.check.rules import RULES
from todo_rls.cli import main

from fix_db import APP_LOGIN, OWNED_TABLES, CreateRole, url_as
from fix_server import PgServer

CANONICAL = "user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), ''))"
Found = list[tuple[str, str]]  # (rule id, object) of each finding, in report order
Breaks = Callable[..., Found]


@pytest.fixture
def app_login_url(pg_server: PgServer, dbname: str) -> str:
    """The test database as the app's login role: the check needs no more than that."""
    return url_as(pg_server, dbname, APP_LOGIN)


def run_check(
    capsys: pytest.CaptureFixture[str], url: str, *options: str
) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON report of `todo-rls check`, login roles limited to the app's.

    Roles are cluster-wide: other suites' LOGIN members of todo_app (some BYPASSRLS on purpose)
    would show up by default, so each run names the login roles it means.
    """
    if "--login-role" not in options:
        options = (*options, "--login-role", APP_LOGIN)
    code = main(["check", "--url", url, "--json", *options])
    return code, json.loads(capsys.readouterr().out)


def found(report: dict[str, Any]) -> Found:
    return [(f["rule"], f["object"]) for f in report["findings"]]


@pytest.fixture
def breaks(
    capsys: pytest.CaptureFixture[str], admin: psycopg.Connection[Any], app_login_url: str
) -> Breaks:
    """breaks(statement, *options): check it is clean, run statement as admin, return findings."""

    def apply(statement: str, *options: str) -> Found:
        code, report = run_check(capsys, app_login_url, *options)
        assert (code, found(report)) == (0, []), "positive control: clean before the break"
        admin.execute(statement.encode())
        code, report = run_check(capsys, app_login_url, *options)
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
    assert sorted(report["summary"]["tables"]) == sorted(f"public.{t}" for t in OWNED_TABLES)


def test_json_report_has_database_findings_and_summary(
    capsys: pytest.CaptureFixture[str], admin: psycopg.Connection[Any], app_login_url: str
) -> None:
    admin.execute("alter table task no force row level security")
    code, report = run_check(capsys, app_login_url)
    assert code == 1
    assert set(report) == {"database", "findings", "summary"}
    assert report["database"] == admin.info.dbname
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


def test_text_report_groups_findings_by_table(
    capsys: pytest.CaptureFixture[str], admin: psycopg.Connection[Any], app_login_url: str
) -> None:
    admin.execute("alter table message no force row level security")
    admin.execute("drop policy task_delete on task")
    assert main(["check", "--url", app_login_url, "--login-role", APP_LOGIN]) == 1
    out = capsys.readouterr().out
    message_block = out.index("\npublic.message\n")
    task_block = out.index("\npublic.task\n")
    assert message_block < out.index("RLS002") < task_block < out.index("POL001")
    assert "fix:    create policy task_delete on public.task for delete to todo_app using" in out
    assert "\n2 findings (1 error, 1 warning); 13 rules over " in out


def test_the_rule_table_lists_each_rule_once() -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids)) == 13
    assert {rule.severity for rule in RULES} == {"error", "warning"}


# --- tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "options", "expected"),
    [
        ("create table public.note (id int, user_id text)", (), "public.note"),
        ("create table public.lookup (id int)", (), "public.lookup"),
        # The allowlist is for tables without owners: a user_id column is checked regardless.
        ("create table public.note (id int, user_id text)", ("--allow", "note"), "public.note"),
        ("create schema other; create table other.note (user_id text)", (), "other.note"),
        ("alter table conversation disable row level security", (), "public.conversation"),
    ],
    ids=["user_id-table", "other-table", "allowlisted-user_id-table", "other-schema", "disabled"],
)
def test_table_without_rls_is_found(
    breaks: Breaks, statement: str, options: tuple[str, ...], expected: str
) -> None:
    assert breaks(statement, *options) == [("RLS001", expected)]


def test_allowlisted_table_without_user_id_is_not_found(
    capsys: pytest.CaptureFixture[str], admin: psycopg.Connection[Any], app_login_url: str
) -> None:
    admin.execute("create table public.lookup (id int)")
    assert run_check(capsys, app_login_url)[0] == 1  # positive control: found without --allow
    assert run_check(capsys, app_login_url, "--allow", "lookup")[0] == 0


def test_table_not_forced_is_found(breaks: Breaks) -> None:
    assert breaks("alter table task no force row level security") == [("RLS002", "public.task")]


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
}


@pytest.mark.parametrize("predicate", FAIL_OPEN.values(), ids=FAIL_OPEN.keys())
def test_fail_open_using_is_found(breaks: Breaks, predicate: str) -> None:
    statement = f"alter policy task_select on task using ({predicate})"
    assert breaks(statement) == [("POL003", "public.task")]


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


def test_setting_outside_a_sub_select_is_found(breaks: Breaks) -> None:
    bare = "user_id = nullif(pg_catalog.current_setting('app.user_id', true), '')"
    statement = f"alter policy task_delete on task using ({bare})"
    assert breaks(statement) == [("POL005", "public.task")]


# --- roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["bypassrls", "superuser"])
def test_login_role_that_bypasses_rls_is_found(
    breaks: Breaks, admin: psycopg.Connection[Any], create_role: CreateRole, attribute: str
) -> None:
    member = create_role("member", "login")
    admin.execute(sql.SQL("grant todo_app to {}").format(sql.Identifier(member)))
    alter = f'alter role "{member}" {attribute}'
    assert breaks(alter, "--login-role", member) == [("ROLE001", f"role {member}")]


def test_login_members_of_the_app_role_are_checked_by_default(
    pg_server: PgServer, dbname: str, admin: psycopg.Connection[Any], create_role: CreateRole
) -> None:
    member, outsider = create_role("member", "login"), create_role("outsider", "login")
    middle = create_role("middle")  # nologin, in between: membership counts through it
    for grantee, role in ((middle, "todo_app"), (member, middle)):
        admin.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(grantee))
        )
    with connect(url_as(pg_server, dbname, APP_LOGIN)) as conn:
        ctx, _ = audit(conn)
    names = {role.name for role in ctx.login_roles}
    assert {APP_LOGIN, member} <= names
    assert not {outsider, middle, "postgres"} & names


def test_login_role_that_owns_tables_is_found(
    capsys: pytest.CaptureFixture[str], app_login_url: str, table_owner: str
) -> None:
    # Owning the tables is fine for a migration role the app never logs in as...
    code, report = run_check(capsys, app_login_url)
    assert (code, found(report)) == (0, [])
    # ...and a hole for the role the app logs in as.
    code, report = run_check(capsys, app_login_url, "--login-role", table_owner)
    expected = sorted(("ROLE002", f"public.{table}") for table in OWNED_TABLES)
    assert (code, sorted(found(report))) == (1, expected)


@pytest.mark.parametrize("privilege", ["truncate", "trigger", "references"])
def test_app_role_with_dangerous_privilege_is_found(breaks: Breaks, privilege: str) -> None:
    statement = f"grant {privilege} on message to todo_app"
    assert breaks(statement) == [("ROLE003", "public.message")]


def test_dangerous_privilege_of_a_login_role_alone_is_found(
    breaks: Breaks, admin: psycopg.Connection[Any], create_role: CreateRole
) -> None:
    member = create_role("member", "login")
    admin.execute(sql.SQL("grant todo_app to {}").format(sql.Identifier(member)))
    options = ("--login-role", member, "--login-role", APP_LOGIN)
    try:
        findings = breaks(f'grant truncate on task to "{member}"', *options)
    finally:  # the scratch role is dropped after the test: it must hold nothing by then
        admin.execute(sql.SQL("revoke all on task from {}").format(sql.Identifier(member)))
    assert findings == [("ROLE003", "public.task")]


# --- foreign keys, functions, views --------------------------------------------------------


def test_foreign_key_without_user_id_is_found(breaks: Breaks) -> None:
    statement = (
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
    assert breaks(statement) == [("FN001", "function public.count_tasks(who text)")]


def test_view_without_security_invoker_is_found(breaks: Breaks) -> None:
    statement = "create view public.open_task as select * from task where not completed"
    assert breaks(statement) == [("VIEW001", "public.open_task")]


SAFE_OBJECTS = {
    "definer-with-search-path": "create function public.f() returns int language sql "
    "security definer set search_path = '' as $$ select 1 $$",
    "invoker-view": "create view public.open_task with (security_invoker = true) as "
    "select * from task where not completed",
    "restrictive-extra-policy": "create policy task_not_blank on task as restrictive "
    "for select to todo_app using (title <> '')",
    "uuid-cast-inside": "alter policy task_select on task using (user_id = "
    "(select nullif(pg_catalog.current_setting('app.user_id', true), '')::varchar(32)))",
}


@pytest.mark.parametrize("statement", SAFE_OBJECTS.values(), ids=SAFE_OBJECTS.keys())
def test_safe_variants_give_no_finding(
    capsys: pytest.CaptureFixture[str],
    admin: psycopg.Connection[Any],
    app_login_url: str,
    statement: str,
) -> None:
    admin.execute(statement.encode())
    code, report = run_check(capsys, app_login_url)
    assert (code, found(report)) == (0, [])


# --- predicates, without a database --------------------------------------------------------

PRINTED = "(user_id = ( SELECT NULLIF(current_setting('app.user_id'::text, true), ''::text) AS \"nullif\"))"  # noqa: E501


def test_canonical_predicate_as_postgresql_prints_it() -> None:
    assert shape(PRINTED) is Shape.CANONICAL
    assert not has_bare_setting(PRINTED)


def test_a_look_alike_function_from_another_schema_is_not_canonical() -> None:
    fake = PRINTED.replace("current_setting", "public.current_setting")
    assert shape(fake) is Shape.OTHER


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
