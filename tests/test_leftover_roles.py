"""The suite's session-finish checks: a role a run makes and leaves behind fails that run, and
so does a database it leaves in its tablespace (tests/ram_tablespace.py).

Each case is a separate pytest process (its own pid, so its own role names) with the suite's
server and role fixtures, on the server this run uses.
"""

import os
import re
from pathlib import Path

import psycopg
import pytest

from todo_rls.testing.database import TABLESPACE_ENV

from fix_server import PgServer

pytest_plugins = ["pytester"]
# Its runs drop what killed runs left when they start (tests/orphans.py): not while
# test_orphans's are being checked.
pytestmark = pytest.mark.xdist_group("orphans")
TESTS = Path(__file__).resolve().parent
INNER = """
import os
from psycopg import sql

def test_makes_a_role_and_a_database(pg_server):
    name = f"todo_rls_test_probe_{os.getpid()}_abc123"
    print("ROLE", name)
    if pg_server.tablespace:  # the run's own (where the server cannot have one, no database)
        pg_server.create_database(name)
    with pg_server.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(name)))
        if DROP:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
"""


def run_inner(pytester: pytest.Pytester, drop: bool, pg_server: PgServer) -> pytest.RunResult:
    pytester.makepyfile(test_inner=f"DROP = {drop}\n{INNER}")
    server = pg_server.url("postgres").render_as_string(hide_password=False)
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (*env.items(), ("TODO_RLS_TEST_SERVER_URL", server)):
            patch.setenv(name, value)
        patch.delenv(TABLESPACE_ENV, raising=False)  # the inner run makes its own
        return pytester.runpytest_subprocess(
            "-p", "fix_server", "-p", "fix_db", "-p", "no:cacheprovider", "-s"
        )


def role_exists(admin: psycopg.Connection[object], name: str) -> bool:
    row = admin.execute("select count(*) from pg_catalog.pg_roles where rolname = %s", (name,))
    return row.fetchone() == (1,)


def database_exists(admin: psycopg.Connection[object], name: str) -> bool:
    row = admin.execute("select count(*) from pg_catalog.pg_database where datname = %s", (name,))
    return row.fetchone() == (1,)


@pytest.mark.slow
def test_a_run_that_leaves_a_role_or_a_database_fails_naming_it_and_it_is_dropped(
    pytester: pytest.Pytester, pg_server: PgServer, admin: psycopg.Connection[object]
) -> None:
    # Positive control: the same run that drops its role passes.
    clean = run_inner(pytester, drop=True, pg_server=pg_server)
    assert clean.ret == 0, clean.stdout.str()
    assert "LEFTOVER" not in clean.stdout.str()

    leaky = run_inner(pytester, drop=False, pg_server=pg_server)
    leaky.assert_outcomes(passed=1)  # every test passed, yet the run fails
    assert leaky.ret == pytest.ExitCode.TESTS_FAILED
    shown = re.search(r"ROLE (\S+)", leaky.stdout.str())
    assert shown is not None, leaky.stdout.str()
    name = shown[1]
    leaky.stdout.fnmatch_lines(
        [f"LEFTOVER ROLES: roles this run created and did not drop: {name}*"]
    )
    assert not role_exists(admin, name)
    if os.environ.get(TABLESPACE_ENV):  # this run has a tablespace, so the inner one had too
        leaky.stdout.fnmatch_lines([f"LEFTOVER DATABASES: {name} (dropped now;*"])
    assert not database_exists(admin, name)
