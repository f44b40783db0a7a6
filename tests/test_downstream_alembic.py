"""An app's own Alembic chain and ours on one database, in both orders (ADR 0010).

The app is a real project: `alembic init`, then `alembic revision` twice. Its first revision is
unrelated to us (a table in a schema of its own); its second creates an owned table and protects
it with enable_owner_rls. Each chain keeps its own version table; `todo-rls check` stays clean
without --allow; upgrade, downgrade to base and upgrade again all work.
"""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import alembic.config
import psycopg
import pytest
from alembic.script import ScriptDirectory

from todo_rls import migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.cli import main
from todo_rls.testing import assert_owner_isolated

from fix_db import APP_LOGIN, url_as
from fix_server import PgServer

ALEMBIC = Path(sys.executable).with_name("alembic")
# One xdist worker for the module: the app's project (three alembic commands) is made once, not
# once by each worker its tests are spread over.
pytestmark = pytest.mark.xdist_group("downstream_alembic")
# The bodies appended to what `alembic revision` generated (the later def wins).
FEATURE_FLAGS = """

def upgrade() -> None:
    op.execute("create schema app_flags")
    op.execute(
        "create table app_flags.feature_flag (name text primary key,"
        " enabled boolean not null default false)"
    )


def downgrade() -> None:
    op.execute("drop schema app_flags cascade")
"""
JOURNAL = '''

from todo_rls.owner_rls import disable_owner_rls, enable_owner_rls


def upgrade() -> None:
    op.execute("""
        create table public.journal_entry (
          id uuid not null default gen_random_uuid(),
          user_id text not null,
          body text not null,
          created_at timestamptz not null default now(),
          updated_at timestamptz not null default now(),
          constraint pk_journal_entry primary key (id),
          constraint fk_journal_entry_user_id_user
            foreign key (user_id) references public."user" (id) on delete cascade
        )
    """)
    enable_owner_rls(op, "journal_entry", index=True)


def downgrade() -> None:
    disable_owner_rls(op, "journal_entry", index=True)
    op.execute("drop table public.journal_entry")
'''


def run(*args: str, cwd: Path) -> str:
    """The alembic CLI (its console script's main) in the app's folder, in this process; what
    it printed. An interpreter start costs more than the command (13 of them: 17 s of a run's
    CPU). The app's env.py would configure logging from its alembic.ini (fileConfig), which
    disables this worker's loggers: that one call does nothing here. A failure fails the test
    with the output; test_the_apps_owned_table_before_todo_rls_... runs the console script."""
    printed = io.StringIO()
    with (
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(printed),
        contextlib.redirect_stderr(printed),
        mock.patch("logging.config.fileConfig"),
    ):
        try:
            alembic.config.main(argv=args, prog="alembic")
        except SystemExit as exit:  # the CLI's own errors (CommandError): "FAILED: ..."
            raise AssertionError(f"alembic {' '.join(args)}: {printed.getvalue()}") from exit
    return printed.getvalue()


@pytest.fixture
def database(pg_server: PgServer, migrated_server: Any) -> Iterator[str]:
    """A fresh database with Better Auth's "user" table, dropped after the test (the run's
    login role, a member of todo_app, comes with migrated_server)."""
    with pg_server.scratch_database() as name:
        with pg_server.connect(name, autocommit=True) as conn:
            conn.execute(BETTER_AUTH_USER_DDL)
        yield name


@pytest.fixture(scope="module")
def app_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project made by `alembic init`, with two revisions; made once, as the CLI makes it,
    and copied for each test."""
    project = tmp_path_factory.mktemp("app")
    run("init", "migrations", cwd=project)
    for rev_id, message, body in (
        ("a1", "feature flags", FEATURE_FLAGS),
        ("a2", "journal", JOURNAL),
    ):
        created = run("revision", "-m", message, "--rev-id", rev_id, cwd=project)
        assert "Generating" in created
        (path,) = (project / "migrations" / "versions").glob(f"{rev_id}_*.py")
        path.write_text(path.read_text() + body)
    return project


@pytest.fixture
def app(app_project: Path, tmp_path: Path, pg_server: PgServer, database: str) -> Path:
    """A copy of the app's project of this test's own, pointed at the database."""
    project = tmp_path / "app"
    shutil.copytree(app_project, project)
    ini = project / "alembic.ini"
    url = pg_server.url(database).render_as_string(hide_password=False).replace("%", "%%")
    lines = ini.read_text().splitlines()
    assert any(line.startswith("sqlalchemy.url = ") for line in lines)
    ini.write_text(
        "\n".join(
            f"sqlalchemy.url = {url}" if line.startswith("sqlalchemy.url = ") else line
            for line in lines
        )
        + "\n"
    )
    return project


def versions(conn: psycopg.Connection[Any], table: str) -> list[str] | None:
    """The rows of version table public.<table>, sorted; None if it does not exist."""
    if conn.execute("select pg_catalog.to_regclass(%s)", (f"public.{table}",)).fetchone() == (
        None,
    ):
        return None
    return sorted(row[0] for row in conn.execute(f"select version_num from public.{table}"))


def exists(conn: psycopg.Connection[Any], relation: str) -> bool:
    return conn.execute("select pg_catalog.to_regclass(%s)", (relation,)).fetchone() != (None,)


def head() -> str:
    revision = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert revision is not None
    return revision


def check_is_clean(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`todo-rls check`, without --allow, finds nothing (login role: the suite's own)."""
    capsys.readouterr()
    code = main(["check", "--url", url, "--json", "--login-role", APP_LOGIN])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    report = json.loads(out)
    assert report["findings"] == []
    # Both chains' tables were looked at; the version tables are no business of RLS.
    assert {"public.journal_entry", "public.task"} <= set(report["summary"]["tables"])


def journal_is_isolated(admin: psycopg.Connection[Any], pg_server: PgServer, database: str) -> None:
    """The app's owned table, through the plugin's isolation matrix as the app's login role."""
    assert_owner_isolated(
        admin, url_as(pg_server, database, APP_LOGIN), "journal_entry", {"body": "hi"}
    )


@pytest.mark.slow
def test_todo_rls_first_then_a_new_apps_own_chain(
    app: Path, pg_server: PgServer, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = pg_server.url(database).render_as_string(hide_password=False)
    with pg_server.connect(database, autocommit=True) as admin:
        for _ in range(2):  # upgrade, downgrade to base, and upgrade again
            assert main(["migrate", "--url", url]) == 0
            assert main(["keys", "add", "--url", url]) == 0  # $TODO_RLS_SIGNING_KEY: fix_db's
            assert versions(admin, "todo_rls_alembic_version") == [head()]
            assert versions(admin, "alembic_version") in (None, [])
            run("upgrade", "head", cwd=app)
            assert versions(admin, "alembic_version") == ["a2"]
            assert versions(admin, "todo_rls_alembic_version") == [head()]
            check_is_clean(url, capsys)
            journal_is_isolated(admin, pg_server, database)

            run("downgrade", "base", cwd=app)
            assert versions(admin, "alembic_version") == []
            assert not exists(admin, "public.journal_entry")
            assert versions(admin, "todo_rls_alembic_version") == [head()]  # ours untouched
            assert main(["downgrade", "--url", url, "--revision", "base"]) == 0
            assert versions(admin, "todo_rls_alembic_version") == []
            assert not exists(admin, "public.task")
        capsys.readouterr()


@pytest.mark.slow
def test_an_existing_apps_chain_first_then_todo_rls_then_the_apps_owned_table(
    app: Path, pg_server: PgServer, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = pg_server.url(database).render_as_string(hide_password=False)
    with pg_server.connect(database, autocommit=True) as admin:
        for _ in range(2):
            run("upgrade", "a1", cwd=app)  # the app as it was before it adopted todo-rls
            assert versions(admin, "alembic_version") == ["a1"]
            assert main(["migrate", "--url", url]) == 0  # the app's row is no revision of ours
            assert main(["keys", "add", "--url", url]) == 0  # $TODO_RLS_SIGNING_KEY: fix_db's
            assert versions(admin, "alembic_version") == ["a1"]
            assert versions(admin, "todo_rls_alembic_version") == [head()]
            run("upgrade", "head", cwd=app)
            assert versions(admin, "alembic_version") == ["a2"]
            check_is_clean(url, capsys)
            journal_is_isolated(admin, pg_server, database)

            run("downgrade", "base", cwd=app)
            assert main(["downgrade", "--url", url, "--revision", "base"]) == 0
            assert versions(admin, "alembic_version") == []
            assert versions(admin, "todo_rls_alembic_version") == []
            assert not exists(admin, "app_flags.feature_flag")
            assert not exists(admin, "public.task")
        capsys.readouterr()


def test_the_apps_owned_table_before_todo_rls_fails_and_writes_nothing(
    app: Path, pg_server: PgServer, database: str
) -> None:
    result = subprocess.run(  # noqa: S603 (our interpreter's alembic, fixed arguments)
        [str(ALEMBIC), "upgrade", "head"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # enable_owner_rls's policies need todo-rls's verifier: the order mistake is loud, and the
    # message says what to run first.
    assert result.returncode != 0
    assert "verifier todo_rls.current_user_id() does not exist" in result.stderr
    assert "todo-rls migrate" in result.stderr
    with pg_server.connect(database, autocommit=True) as admin:
        assert versions(admin, "alembic_version") is None  # one transaction: nothing written
        assert not exists(admin, "public.journal_entry")
        assert not exists(admin, "app_flags.feature_flag")
