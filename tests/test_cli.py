"""The todo-rls command line: migrate/downgrade exit codes and messages, and the demo's claims."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from psycopg import sql

from todo_rls import demo, migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.cli import main

from catalog import OUR_TABLES, snapshot
from fix_db import APP_LOGIN, DatabaseOwner, create_user, owned_database, url_as
from fix_server import PgServer

DEMO_CLAIMS = (
    "(superuser: no, bypassrls: no), row_security_active('task'): yes",
    "alice sees only her 2 tasks (sees 2, 0 of them someone else's)",
    "bob sees only his 1 task (sees 1, 0 of them someone else's)",
    "an unscoped session (plain Session, no user) sees 0 of the 3 demo tasks",
    "alice's deliberately unfiltered `select * from task` returns only her rows (2, 0 someone",
    "alice cannot update bob's task: 0 rows affected (her own task: 1)",
    "alice cannot add a message to bob's conversation: refused (ForeignKeyViolation)",
    "alice cannot add one posing as bob either: refused (InsufficientPrivilege)",
    "bob still sees only his 1 message (sees 1)",
    "SQL in alice's session that sets app.user_id to bob's id: refused (ContextRejectedError:"
    " the signature does not match)",
)


@pytest.fixture
def fresh_db(pg_server: PgServer) -> Iterator[str]:
    """A new empty database (no "user" table, no migrations), dropped after the test."""
    with pg_server.scratch_database() as name:
        yield name


@pytest.fixture
def fresh_url(pg_server: PgServer, fresh_db: str) -> str:
    """Superuser URL of fresh_db."""
    return pg_server.url(fresh_db).render_as_string(hide_password=False)


@pytest.fixture
def fresh_admin(pg_server: PgServer, fresh_db: str) -> Iterator[psycopg.Connection[Any]]:
    """Superuser connection to fresh_db, for arranging and inspecting (never for isolation)."""
    with pg_server.connect(fresh_db, autocommit=True) as conn:
        yield conn


def _relation_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("select pg_catalog.to_regclass(%s) is not null", (name,)).fetchone()
    return bool(row and row[0])


def _claim_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip()[:1] in ("✓", "✗")]


def _console_script() -> str:
    script = shutil.which("todo-rls", path=str(Path(sys.executable).parent))
    assert script is not None, "console script missing: pip install -e '.[dev]'"
    return script


def _demo_task_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "select count(*) from task where user_id = any(%s)", ([demo.ALICE.id, demo.BOB.id],)
    ).fetchone()
    return int(row[0]) if row else -1


def test_migrate_applies_schema_with_forced_rls(
    fresh_url: str, fresh_db: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)

    assert main(["migrate", "--url", fresh_url]) == 0

    assert f"upgraded database {fresh_db!r}" in capsys.readouterr().out
    forced = fresh_admin.execute(
        "select relname::text from pg_catalog.pg_class where relnamespace = 'public'::regnamespace"
        " and relrowsecurity and relforcerowsecurity order by 1"
    ).fetchall()
    assert [name for (name,) in forced] == list(OUR_TABLES)
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert fresh_admin.execute("select version_num from todo_rls_alembic_version").fetchall() == [
        (head,)
    ]


def test_version_is_the_installed_distributions(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"todo-rls {importlib.metadata.version('todo-rls')}\n"


def test_migrate_and_downgrade_say_where_the_database_ended(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert main(["migrate", "--url", fresh_url]) == 0
    out = capsys.readouterr().out
    assert "(URL from --url); it is now at " in out and f"now at {head} (" in out
    first = ScriptDirectory.from_config(migrate.alembic_config()).get_base()
    assert main(["downgrade", "--url", fresh_url, "--revision", str(first)]) == 0
    assert f"it is now at {first} (Core schema" in capsys.readouterr().out
    assert main(["downgrade", "--url", fresh_url, "--revision", "base"]) == 0
    assert "it is now at base (no todo-rls revision applied" in capsys.readouterr().out


def test_downgrade_without_a_target_is_refused_and_changes_nothing(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    assert main(["migrate", "--url", fresh_url]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["downgrade", "--url", fresh_url])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --revision" in capsys.readouterr().err
    assert _relation_exists(fresh_admin, "public.task")  # nothing was dropped


def test_downgrade_removes_schema_and_keeps_users(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    assert main(["migrate", "--url", fresh_url]) == 0
    user_id = create_user(fresh_admin)
    assert _relation_exists(fresh_admin, "public.task")  # positive control

    assert main(["downgrade", "--url", fresh_url, "--revision", "base"]) == 0

    assert "downgraded" in capsys.readouterr().out
    for table in OUR_TABLES:
        assert not _relation_exists(fresh_admin, f"public.{table}")
    rows = fresh_admin.execute('select id from "user"').fetchall()
    assert rows == [(user_id,)]


def test_migrate_without_user_table_exits_2_with_hint_and_writes_nothing(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    assert main(["migrate", "--url", fresh_url]) == 2

    err = capsys.readouterr().err
    assert 'table public."user" does not exist' in err
    assert "Run Better Auth's migration first" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not _relation_exists(fresh_admin, "public.task")
    assert not _relation_exists(fresh_admin, "public.todo_rls_alembic_version")


def test_migrate_without_url_exits_2_naming_where_it_looks(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL_DIRECT", raising=False)

    assert main(["migrate"]) == 2

    err = capsys.readouterr().err
    assert "DATABASE_URL_DIRECT" in err and "DATABASE_URL" in err and "--url" in err
    assert "Traceback" not in err


def test_migrate_takes_url_from_database_url(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    monkeypatch.delenv("DATABASE_URL_DIRECT", raising=False)
    monkeypatch.setenv("DATABASE_URL", fresh_url)

    assert main(["migrate"]) == 0

    assert _relation_exists(fresh_admin, "public.task")


@pytest.fixture
def fresh_app_url(pg_server: PgServer, fresh_db: str, migrated_server: Any) -> str:
    """fresh_db as the run's app login role (a member of todo_app, owner of nothing)."""
    return url_as(pg_server, fresh_db, APP_LOGIN)


def test_migrate_prefers_the_direct_url_over_the_apps_database_url(
    fresh_url: str,
    fresh_app_url: str,
    fresh_admin: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    # Neon's layout: DATABASE_URL is the app's pooled URL, DATABASE_URL_DIRECT the owner's.
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    monkeypatch.setenv("DATABASE_URL", fresh_app_url)
    monkeypatch.setenv("DATABASE_URL_DIRECT", fresh_url)

    assert main(["migrate"]) == 0

    assert "(URL from $DATABASE_URL_DIRECT)" in capsys.readouterr().out
    assert _relation_exists(fresh_admin, "public.task")


def test_migrate_as_the_app_role_is_refused_before_anything_changes(
    fresh_app_url: str,
    fresh_admin: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    # Forgetting --url with only the app's DATABASE_URL set: refused, naming what to pass.
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    before = snapshot(fresh_admin)
    monkeypatch.delenv("DATABASE_URL_DIRECT", raising=False)
    monkeypatch.setenv("DATABASE_URL", fresh_app_url)

    assert main(["migrate"]) == 2

    err = capsys.readouterr().err
    assert f"connected as {APP_LOGIN}, which does not own schema public" in err
    assert "Nothing was changed" in err and "$DATABASE_URL_DIRECT" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(fresh_admin) == before
    assert not _relation_exists(fresh_admin, "public.todo_rls_alembic_version")


def test_the_database_owner_migrates_without_being_a_superuser(
    pg_server: PgServer, database_owner: DatabaseOwner, capsys: Any
) -> None:
    name, role, url = database_owner.database, database_owner.role, database_owner.url
    assert main(["migrate", "--url", url]) == 0
    with pg_server.connect(name, autocommit=True) as conn:
        owner = conn.execute(
            "select relowner::regrole::text from pg_class where oid = 'task'::regclass"
        )
        assert owner.fetchone() == (role,)
    # Its own objects now: it may take them down again too.
    assert main(["downgrade", "--url", url, "--revision", "base"]) == 0
    assert "now at base" in capsys.readouterr().out


def test_an_owner_who_may_not_join_the_verifier_role_is_told_the_grant_and_nothing_changes(
    pg_server: PgServer, migrated_server: Any, capsys: Any
) -> None:
    with pg_server.connect("postgres") as conn:
        if conn.info.server_version < 160000:
            pytest.skip("PostgreSQL 15 lets a CREATEROLE role grant roles it did not create")
    # The suite's superuser made todo_rls_verifier; this owner has no ADMIN OPTION on it.
    with (
        owned_database(pg_server, joins_verifier=False) as owner,
        pg_server.connect(owner.database, autocommit=True) as conn,
    ):
        before = snapshot(conn)
        assert main(["migrate", "--url", owner.url]) == 2
        err = capsys.readouterr().err
        assert f"role {owner.role} may not make itself a member of role todo_rls_verifier" in err
        assert f"runs: grant todo_rls_verifier to {owner.role}; then migrate again" in err
        assert snapshot(conn) == before


def test_an_owner_of_the_schema_but_not_of_our_tables_is_refused(
    pg_server: PgServer, database_owner: DatabaseOwner, capsys: Any
) -> None:
    name, role, url = database_owner.database, database_owner.role, database_owner.url
    superuser_url = pg_server.url(name).render_as_string(hide_password=False)
    assert main(["migrate", "--url", superuser_url]) == 0  # the tables are the superuser's
    capsys.readouterr()
    with pg_server.connect(name, autocommit=True) as conn:
        before = snapshot(conn)
        assert main(["downgrade", "--url", url, "--revision", "base"]) == 2
        err = capsys.readouterr().err
        assert f"connected as {role}, which does not own" in err
        assert f"table task (owner {pg_server.user})" in err
        assert "schema public" not in err  # it does own the schema, as the database owner
        assert snapshot(conn) == before


def test_an_owner_whose_schema_public_is_the_superusers_is_told_the_fix(
    pg_server: PgServer, database_owner: DatabaseOwner, capsys: Any
) -> None:
    # PostgreSQL 14's layout, made on any version: public belongs to the bootstrap superuser.
    name, role, url = database_owner.database, database_owner.role, database_owner.url
    with pg_server.connect(name, autocommit=True) as conn:
        conn.execute(
            sql.SQL("alter schema public owner to {}").format(sql.Identifier(pg_server.user))
        )
        before = snapshot(conn)
        assert main(["migrate", "--url", url]) == 2
        err = capsys.readouterr().err
        assert f"connected as {role}, which does not own schema public (owner " in err
        hint = "the superuser can run alter schema public owner to pg_database_owner"
        assert (hint in err) == (conn.info.server_version < 150000)
        assert snapshot(conn) == before
        # Positive control: the fix it names (15's default) lets the owner migrate.
        conn.execute("alter schema public owner to pg_database_owner")
        assert main(["migrate", "--url", url]) == 0


def test_migrate_unreachable_server_exits_2_in_one_line(capsys: Any) -> None:
    # Port 1 on loopback has no listener: the connection is refused at once.
    assert main(["migrate", "--url", "postgresql://postgres@127.0.0.1:1/postgres"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("todo-rls: error: ") and len(err.strip().splitlines()) == 1
    assert "check that the server runs" in err


def test_demo_proves_every_claim_on_fresh_database(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    assert main(["demo", "--url", fresh_url]) == 0

    out = capsys.readouterr().out
    assert "a stand-in for its own migration" in out
    claims = _claim_lines(out)
    assert len(claims) == len(DEMO_CLAIMS)
    assert all(line.startswith("✓ ") for line in claims), out
    for claim in DEMO_CLAIMS:
        assert claim in out
    assert f"{len(DEMO_CLAIMS)} of {len(DEMO_CLAIMS)} claims held." in out
    assert _demo_task_count(fresh_admin) == 3  # the rows the claims talk about are real
    # Checked as the run's own login role, which is gone once the demo ends.
    role = re.search(r"✓ connected as (todo_rls_demo_app_\d+_[0-9a-f]{8}) \(", out)
    assert role is not None, out
    assert f"Claims, each checked as {role[1]} (dropped since):" in out
    gone = fresh_admin.execute("select count(*) from pg_roles where rolname = %s", (role[1],))
    assert gone.fetchone() == (0,)


def test_demo_runs_twice_on_same_database(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    assert main(["demo", "--url", fresh_url]) == 0
    capsys.readouterr()

    assert main(["demo", "--url", fresh_url]) == 0

    out = capsys.readouterr().out
    assert '"user" table  already there' in out
    assert all(line.startswith("✓ ") for line in _claim_lines(out)), out
    assert _demo_task_count(fresh_admin) == 3  # replaced, not duplicated


def test_demo_marks_claims_that_fail_when_a_policy_is_weakened(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    assert main(["demo", "--url", fresh_url]) == 0  # positive control: all claims hold
    capsys.readouterr()
    fresh_admin.execute("drop policy task_select on public.task")
    fresh_admin.execute(
        "create policy task_select on public.task for select to todo_app using (true)"
    )

    assert main(["demo", "--url", fresh_url]) == 1

    claims = _claim_lines(capsys.readouterr().out)
    assert "✗ alice sees only her 2 tasks (sees 3, 1 of them someone else's)" in claims
    assert "✗ an unscoped session (plain Session, no user) sees 3 of the 3 demo tasks" in claims
    assert "✓ alice cannot update bob's task: 0 rows affected (her own task: 1)" in claims


def test_demo_refuses_application_role_url_and_writes_nothing(
    app_url: str, admin: psycopg.Connection[Any], capsys: Any
) -> None:
    assert main(["demo", "--url", app_url]) == 2

    err = capsys.readouterr().err
    assert "cannot create roles: pass an admin URL" in err and "Traceback" not in err
    found = admin.execute('select count(*) from "user" where id = %s', (demo.ALICE.id,)).fetchone()
    assert found == (0,)


@pytest.mark.slow
def test_demo_runs_on_embedded_server_without_url(
    embedded_dir: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real process, as in the README: the embedded server stops when it exits.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    tmp_path = embedded_dir()

    result = subprocess.run(  # noqa: S603 (our own console script, fixed arguments)
        [_console_script(), "demo"], cwd=tmp_path, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "an embedded PostgreSQL in .todo-rls/pgdata" in result.stdout
    assert (tmp_path / ".todo-rls" / "pgdata" / "PG_VERSION").is_file()
    claims = _claim_lines(result.stdout)
    assert len(claims) == len(DEMO_CLAIMS)
    assert all(line.startswith("✓ ") for line in claims), result.stdout


def test_demo_rejects_data_dir_together_with_url(fresh_url: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--url", fresh_url, "--data-dir", "somewhere"])

    assert exit_info.value.code == 2
    assert "--data-dir is for the embedded server" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "explains"),
    [
        ("migrate", 'Better Auth\'s "user" table must exist first'),
        ("downgrade", "never touched"),
        ("demo", "admin URL"),
    ],
)
def test_every_command_explains_itself_in_help(command: str, explains: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: todo-rls {command}") and explains in out


@pytest.mark.slow  # a subprocess
def test_console_script_prints_help() -> None:
    result = subprocess.run(  # noqa: S603 (our own console script, fixed arguments)
        [_console_script(), "--help"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    for command in ("migrate", "downgrade", "demo"):
        assert command in result.stdout
