"""The todo-rls command line: migrate/downgrade exit codes and messages, and the demo's claims."""

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from todo_rls import demo, migrate
from todo_rls.cli import main
from todo_rls.demo import BETTER_AUTH_USER_DDL

from fix_db import create_user
from fix_server import PgServer

DEMO_CLAIMS = (
    "connected as todo_rls_demo_app (superuser: no, bypassrls: no),"
    " row_security_active('task'): yes",
    "alice sees only her 2 tasks (sees 2, 0 of them someone else's)",
    "bob sees only his 1 task (sees 1, 0 of them someone else's)",
    "an unscoped session (plain Session, no user) sees 0 of the 3 demo tasks",
    "alice's deliberately unfiltered `select * from task` returns only her rows (2, 0 someone",
    "alice cannot update bob's task: 0 rows affected (her own task: 1)",
    "alice cannot add a message to bob's conversation: refused (ForeignKeyViolation)",
    "alice cannot add one posing as bob either: refused (InsufficientPrivilege)",
    "bob still sees only his 1 message (sees 1)",
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
    assert [name for (name,) in forced] == ["conversation", "message", "task", "user_preference"]
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert fresh_admin.execute("select version_num from alembic_version").fetchall() == [(head,)]


def test_downgrade_removes_schema_and_keeps_users(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], capsys: Any
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    assert main(["migrate", "--url", fresh_url]) == 0
    user_id = create_user(fresh_admin)
    assert _relation_exists(fresh_admin, "public.task")  # positive control

    assert main(["downgrade", "--url", fresh_url]) == 0

    assert "downgraded" in capsys.readouterr().out
    for table in ("task", "conversation", "message", "user_preference"):
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
    assert not _relation_exists(fresh_admin, "public.alembic_version")


def test_migrate_without_url_exits_2_naming_database_url(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)

    assert main(["migrate"]) == 2

    err = capsys.readouterr().err
    assert "DATABASE_URL" in err and "--url" in err
    assert "Traceback" not in err


def test_migrate_takes_url_from_database_url(
    fresh_url: str, fresh_admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_admin.execute(BETTER_AUTH_USER_DDL)
    monkeypatch.setenv("DATABASE_URL", fresh_url)

    assert main(["migrate"]) == 0

    assert _relation_exists(fresh_admin, "public.task")


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


def test_demo_runs_on_embedded_server_without_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real process, as in the README: the embedded server stops when it exits.
    monkeypatch.delenv("DATABASE_URL", raising=False)

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


def test_console_script_prints_help() -> None:
    result = subprocess.run(  # noqa: S603 (our own console script, fixed arguments)
        [_console_script(), "--help"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    for command in ("migrate", "downgrade", "demo"):
        assert command in result.stdout
