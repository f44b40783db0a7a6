"""The wheel ships the migrations: `todo-rls migrate` works from `pip install todo-rls`.

The wheel is built from a copy of the sources (so the build leaves nothing in the checkout),
installed with --target into a scratch directory and run with `python -S` (no .pth files, so
the editable install of the checkout is invisible) from a directory outside the checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from todo_rls import MigrationPreconditionError, migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL

from catalog import OUR_TABLES
from fix_server import PgServer

# Builds a wheel and installs it into a fresh environment.
# One xdist worker for the module: the wheel (an isolated pip build, ~3 s) is built once, not
# once by each worker its tests are spread over.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "src", "migrations")
PACKAGED = "todo_rls/_migrations"
# Prints where todo_rls and its migrations were imported from, then runs the CLI's migrate.
MIGRATE_SCRIPT = """
import sys
import todo_rls
from todo_rls import cli, migrate
print(todo_rls.__file__)
print(migrate.migrations_dir())
sys.exit(cli.main(["migrate", "--url", sys.argv[1]]))
"""


def _source_files(root: Path) -> set[str]:
    """Files under root, relative and posix-style, without bytecode caches."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built by pip (in an isolated build environment) from a copy of the sources."""
    tree = tmp_path_factory.mktemp("tree")
    for name in SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    dist = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(tree)]
    subprocess.run(pip, check=True, timeout=180)  # noqa: S603 - our interpreter, our paths
    (built,) = dist.glob("todo_rls-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture
def installed(wheel: Path, tmp_path: Path) -> Path:
    """The wheel installed without its dependencies into a scratch site directory."""
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True, timeout=120)  # noqa: S603
    return site


@pytest.fixture
def user_table_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh database holding only Better Auth's "user" table, dropped after the test."""
    with pg_server.scratch_database() as name:
        with pg_server.connect(name, autocommit=True) as conn:
            conn.execute(BETTER_AUTH_USER_DDL)
        yield name


def test_wheel_ships_every_migration_file(wheel_files: set[str]) -> None:
    expected = {f"{PACKAGED}/{name}" for name in _source_files(REPO_ROOT / "migrations")}
    assert {f"{PACKAGED}/env.py", f"{PACKAGED}/script.py.mako"} <= expected
    versions = {name for name in expected if name.startswith(f"{PACKAGED}/versions/")}
    assert len(versions) >= 2, versions
    assert expected - wheel_files == set()


def test_wheel_ships_every_module_of_the_package(wheel_files: set[str]) -> None:
    # pyproject.toml lists the packages by hand (see its comment): a new subpackage of
    # src/todo_rls that is missing there would silently be left out of the wheel.
    expected = {f"todo_rls/{name}" for name in _source_files(REPO_ROOT / "src" / "todo_rls")}
    missing = sorted(expected - wheel_files)
    assert missing == [], f"add their packages to [tool.setuptools] packages: {missing}"


def test_wheel_installs_nothing_but_todo_rls(wheel_files: set[str]) -> None:
    # package-dir must map migrations/ under todo_rls, never as a top-level `migrations` package
    # that would collide with the migrations of the application installing todo-rls.
    top_level = {name.split("/", 1)[0] for name in wheel_files}
    (metadata,) = top_level - {"todo_rls"}
    assert metadata.startswith("todo_rls-") and metadata.endswith(".dist-info"), top_level


def test_wheel_registers_no_pytest_plugin_and_needs_no_bench_dependency(wheel: Path) -> None:
    # The plugin is opt-in (-p todo_rls.testing): an app that installs todo-rls must not get
    # --rls-* options and fixtures in every pytest run. tqdm is the bench's, an extra.
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        entry_points = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        groups = archive.read(entry_points[0]).decode() if entry_points else ""
    assert "[console_scripts]" in groups  # positive control: the entry points were read
    assert "pytest11" not in groups
    unconditional = [req for req in requires if "extra ==" not in req]
    assert any(req.startswith("sqlmodel") for req in unconditional)  # positive control
    assert not [req for req in unconditional if req.startswith(("tqdm", "matplotlib"))]
    assert any(req.startswith("tqdm") and 'extra == "bench"' in req for req in requires)


def test_cli_migrates_from_the_installed_wheel(
    installed: Path, pg_server: PgServer, user_table_database: str, tmp_path: Path
) -> None:
    url = pg_server.url(user_table_database).render_as_string(hide_password=False)
    # -S skips site-packages' .pth files (the checkout's editable install); the dependencies
    # come from this interpreter's site-packages, after the scratch install.
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), *deps])}
    env.pop("DATABASE_URL", None)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-S", "-c", MIGRATE_SCRIPT, url],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    package_file, migrations = result.stdout.splitlines()[:2]
    assert Path(package_file).is_relative_to(installed), package_file
    assert Path(migrations) == installed / "todo_rls" / "_migrations"

    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    with pg_server.connect(user_table_database) as conn:
        assert _versions(conn) == [head]
        for table in OUR_TABLES:
            assert _forced_rls(conn, table), table


def _versions(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("select version_num from todo_rls_alembic_version")]


def _forced_rls(conn: psycopg.Connection[Any], table: str) -> bool:
    """Whether public.table exists with row-level security enabled and forced."""
    row = conn.execute(
        "select relrowsecurity and relforcerowsecurity from pg_catalog.pg_class"
        " where oid = pg_catalog.to_regclass(%s)",
        (f"public.{table}",),
    ).fetchone()
    return bool(row and row[0])


def test_checkout_runs_its_own_migrations_folder() -> None:
    # The suite runs against an editable install: the folder developers edit is the one used.
    assert migrate.migrations_dir() == REPO_ROOT / "migrations"
    location = migrate.alembic_config().get_main_option("script_location")
    assert location == str(REPO_ROOT / "migrations")


def test_missing_migrations_say_where_they_were_looked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    packaged, checkout = tmp_path / "packaged", tmp_path / "checkout"
    monkeypatch.setattr(migrate, "PACKAGED_MIGRATIONS", packaged)
    monkeypatch.setattr(migrate, "CHECKOUT_MIGRATIONS", checkout)
    with pytest.raises(MigrationPreconditionError) as raised:
        migrate.alembic_config()
    message = str(raised.value)
    assert str(packaged) in message
    assert str(checkout) in message
    assert "pip install --force-reinstall todo-rls" in message
