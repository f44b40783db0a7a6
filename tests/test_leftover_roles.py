"""The suite's session-finish check: a role a run makes and leaves behind fails that run.

Each case is a separate pytest process (its own pid, so its own role names) with the suite's
server and role fixtures, on the server this run uses.
"""

import os
import re
from pathlib import Path

import psycopg
import pytest

from fix_server import PgServer

pytest_plugins = ["pytester"]
TESTS = Path(__file__).resolve().parent
INNER = """
import os
from psycopg import sql

def test_makes_a_role(pg_server):
    name = f"todo_rls_test_probe_{os.getpid()}_abc123"
    print("ROLE", name)
    with pg_server.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(name)))
        if DROP:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
"""


def run_inner(pytester: pytest.Pytester, drop: bool, pg_server: PgServer) -> pytest.RunResult:
    pytester.makepyfile(test_inner=f"DROP = {drop}\n{INNER}")
    server = pg_server.url("postgres").render_as_string(hide_password=False)
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (*env.items(), ("TODO_RLS_TEST_SERVER_URL", server)):
            patch.setenv(name, value)
        return pytester.runpytest_subprocess(
            "-p", "fix_server", "-p", "fix_db", "-p", "no:cacheprovider", "-s"
        )


def role_exists(admin: psycopg.Connection[object], name: str) -> bool:
    row = admin.execute("select count(*) from pg_catalog.pg_roles where rolname = %s", (name,))
    return row.fetchone() == (1,)


@pytest.mark.slow
def test_a_run_that_leaves_a_role_fails_naming_it_and_the_role_is_dropped(
    pytester: pytest.Pytester, pg_server: PgServer, admin: psycopg.Connection[object]
) -> None:
    # Positive control: the same run that drops its role passes.
    clean = run_inner(pytester, drop=True, pg_server=pg_server)
    assert clean.ret == 0, clean.stdout.str()
    assert "LEFTOVER ROLES" not in clean.stdout.str()

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
