"""pgrls, an independent RLS linter, finds no error or warning on the migrated schema."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fix_db import BYPASS_LOGIN
from fix_server import PgServer

REPO_CONFIG = Path(__file__).resolve().parents[1] / "pgrls.toml"
# Info-level hints allowed on a clean schema; docs/check.md says why each is not acted on.
ALLOWED_INFO = {"SEC007"}


# The roles test runs and bench runs make (this run's, a concurrent run's on the same server,
# or a killed run's): named todo_rls_<test|bench|plugin|demo>_..., each dropped by its run.
SCRATCH_ROLES = (
    "select rolname::text from pg_roles where rolname ~ '^todo_rls_(test|bench|plugin|demo)_'"
)


@pytest.fixture
def test_config(tmp_path: Path, admin: psycopg.Connection[Any]) -> Path:
    """The repository's pgrls.toml, plus the test cluster's deliberately BYPASSRLS roles.

    SEC016 and SEC029 look at every role of the cluster. A test run makes BYPASSRLS login roles
    on purpose (to prove the wrapper refuses them, and to benchmark without RLS), and other
    runs on the same server may have theirs; a deployment has none of them.
    """
    scratch = [str(name) for (name,) in admin.execute(SCRATCH_ROLES)]
    assert BYPASS_LOGIN in scratch  # positive control: the pattern finds this run's roles
    roles = json.dumps(scratch)
    config = tmp_path / "pgrls.toml"
    config.write_text(
        f"extends = {json.dumps(str(REPO_CONFIG))}\n\n"
        f"[lint.rules.SEC016]\nallowlist = {roles}\n\n"
        f"[lint.rules.SEC029]\nallowlist = {json.dumps(scratch)}\n"
    )
    return config


def lint(pg_server: PgServer, dbname: str, config: Path) -> tuple[int, list[dict[str, Any]]]:
    """pgrls lint's exit code and violations for dbname (live-database mode)."""
    url = pg_server.url(dbname).set(drivername="postgresql")
    command = [sys.executable, "-m", "pgrls", "lint", "--config", str(config), "--format", "json"]
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [*command, "--database-url", url.render_as_string(hide_password=False)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout, result.stderr
    violations: list[dict[str, Any]] = json.loads(result.stdout)["violations"]
    return result.returncode, violations


def test_pgrls_finds_no_error_or_warning_on_the_migrated_schema(
    pg_server: PgServer, dbname: str, test_config: Path
) -> None:
    code, violations = lint(pg_server, dbname, test_config)
    serious = [v for v in violations if v["severity"] in ("error", "warning")]
    assert serious == []
    assert {v["rule_id"] for v in violations} <= ALLOWED_INFO
    assert code == 0


@pytest.mark.own_database
def test_pgrls_with_this_config_still_finds_a_hole(
    pg_server: PgServer, dbname: str, admin: psycopg.Connection[Any], test_config: Path
) -> None:
    # Positive control: the allowlists above must not have switched the linter off.
    admin.execute("alter table task no force row level security")
    code, violations = lint(pg_server, dbname, test_config)
    serious = [(v["rule_id"], v["location"]) for v in violations if v["severity"] == "error"]
    assert serious == [("SEC002", "public.task")]
    assert code != 0
