"""`todo-rls bench`: index-only plans, no extra round trip, and a smoke of the whole command.

Nothing here is timed; the bench prints figures, these tests check what must hold regardless.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import URL, Engine, text
from sqlmodel import Session

from todo_rls import cli
from todo_rls.bench.data import generate
from todo_rls.bench.measure import engine, measure_round_trips
from todo_rls.bench.patterns import PATTERNS, Pattern
from todo_rls.bench.plans import index_scans_only, plan_of
from todo_rls.bench.scales import SCALES
from todo_rls.bench.setup import (
    BENCH_APP_ROLE,
    BENCH_BYPASS_ROLE,
    admin_connect,
    disable_bypass_login,
    prepare_database,
)
from todo_rls.bench.subjects import Subject, pick_subjects
from todo_rls.session import scoped_session

from fix_server import PgServer

TINY = SCALES["tiny"]
TOP_LEVEL_KEYS = {
    "scale",
    "machine",
    "database",
    "generation_seconds",
    "iterations",
    "subjects",
    "patterns",
    "round_trips",
    "latency",
    "throughput",
    "role_check",
    "targets",
    "list_growth",
}
PATTERN_KEYS = {
    "name",
    "rls_median_ms",
    "rls_p95_ms",
    "rls_without_check_median_ms",
    "rls_without_check_p95_ms",
    "explicit_median_ms",
    "explicit_p95_ms",
    "ratio",
    "ratio_without_check",
    "plan_rls",
    "plan_explicit",
    "plan_heaviest_user_rls",
    "heaviest_user_tasks",
    "index_scans_only",
}


@dataclass(frozen=True)
class BenchDb:
    """A scratch database filled at scale tiny, and the bench's URLs of it."""

    admin_url: str  # of the server's postgres database, as the CLI is given it
    dbname: str
    admin: URL
    app_url: URL
    bypass_url: URL
    subjects: list[Subject]

    @property
    def typical(self) -> Subject:
        """The median of the subjects by task count: a realistic user, not the heaviest."""
        return self.subjects[len(self.subjects) // 2]


@pytest.fixture(scope="module")
def bench_db(pg_server: PgServer) -> Iterator[BenchDb]:
    """The bench's own setup and data generation, on a database dropped after the module."""
    admin_url = pg_server.url("postgres").render_as_string(hide_password=False)
    with pg_server.scratch_database() as dbname:
        admin, app_url, bypass_url = prepare_database(admin_url, dbname)
        try:
            with admin_connect(admin) as conn:
                generate(conn, TINY)  # ends with ANALYZE
                subjects = pick_subjects(conn)
            yield BenchDb(admin_url, dbname, admin, app_url, bypass_url, subjects)
        finally:
            disable_bypass_login(admin)  # as `todo-rls bench` does: no BYPASSRLS login left


@pytest.fixture(scope="module")
def bench_app_engine(bench_db: BenchDb) -> Iterator[Engine]:
    """The library's engine as the bench's app login role (a member of todo_app)."""
    app = engine(bench_db.app_url)
    yield app
    app.dispose()


def test_tiny_scale_has_the_rows_and_skew_it_promises(bench_db: BenchDb) -> None:
    with admin_connect(bench_db.admin) as conn:
        row = conn.execute(
            'select (select count(*) from "user"), (select count(*) from task),'
            " (select count(*) from conversation), (select count(*) from message),"
            " (select max(n) from (select count(*) as n from task group by user_id) s)"
        ).fetchall()[0]
    assert row[:4] == (TINY.users, TINY.tasks, TINY.conversations, TINY.messages)
    assert row[4] >= 10 * TINY.tasks // TINY.users, "the heaviest user has 10x the mean or more"


def _assert_app_role_under_rls(session: Session) -> None:
    role, active = (
        session.connection()
        .execute(text("select current_user::text, pg_catalog.row_security_active('public.task')"))
        .one()
    )
    assert (role, active) == (BENCH_APP_ROLE, True)


@pytest.mark.parametrize("pattern", PATTERNS, ids=[p.name for p in PATTERNS])
def test_pattern_plans_only_index_scans_as_the_app_role(
    bench_db: BenchDb, bench_app_engine: Engine, pattern: Pattern
) -> None:
    subject = bench_db.typical

    @contextmanager
    def app_session() -> Iterator[Session]:
        with scoped_session(bench_app_engine, subject.user_id) as session:
            _assert_app_role_under_rls(session)
            yield session

    nodes = plan_of(app_session(), pattern, subject)
    assert nodes, f"{pattern.name}: no scan of task, conversation or message in its plans"
    assert index_scans_only(nodes), f"{pattern.name}: {nodes}"


def test_plan_check_reports_a_sequential_scan(bench_db: BenchDb, bench_app_engine: Engine) -> None:
    # Control for the test above: with index scans disabled the same check must fail.
    subject = bench_db.typical

    @contextmanager
    def no_index_session() -> Iterator[Session]:
        with scoped_session(bench_app_engine, subject.user_id) as session:
            _assert_app_role_under_rls(session)
            for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                session.connection().execute(
                    text("select pg_catalog.set_config(:name, 'off', true)"), {"name": setting}
                )
            yield session

    nodes = plan_of(no_index_session(), PATTERNS[0], subject)
    assert nodes == ["Seq Scan on task"]
    assert not index_scans_only(nodes)


def test_scoped_request_takes_no_more_round_trips_than_unscoped(bench_db: BenchDb) -> None:
    trips = measure_round_trips(bench_db.app_url, bench_db.bypass_url, bench_db.typical)
    # Control for the counter: an unscoped transaction is BEGIN, query, COMMIT (RLS-FACTS).
    assert trips["unscoped"] == 3, trips
    assert trips["scoped"] == trips["unscoped"], trips
    assert trips["extra"] == 0


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _bypass_login_state(bench_db: BenchDb) -> tuple[Any, ...]:
    """(LOGIN, VALID UNTIL within a day and a bit from now) of the bench's BYPASSRLS role."""
    with admin_connect(bench_db.admin) as conn:
        row = conn.execute(
            "select rolcanlogin, rolvaliduntil between now() and now() + interval '25 hours'"
            " from pg_catalog.pg_roles where rolname = %s",
            (BENCH_BYPASS_ROLE,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_bench_tiny_json_smoke_then_the_bypass_login_is_disabled(
    bench_db: BenchDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Positive control: during a run the BYPASSRLS role logs in (with an expiring password).
    with psycopg.connect(_libpq(bench_db.bypass_url)) as conn:
        assert conn.execute("select current_user::text").fetchone() == (BENCH_BYPASS_ROLE,)
    assert _bypass_login_state(bench_db) == (True, True)
    chart = tmp_path / "bench.png"
    argv = ["bench", "--url", bench_db.admin_url, "--scale", "tiny", "--database"]
    argv += [bench_db.dbname, "--iterations", "3", "--threads", "2", "--json"]
    argv += ["--results-dir", str(tmp_path / "results"), "--chart", str(chart)]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == TOP_LEVEL_KEYS
    assert result["scale"]["name"] == "tiny" and result["database"] == bench_db.dbname
    assert result["generation_seconds"] is None, "the populated database was reused"
    assert [p["name"] for p in result["patterns"]] == [p.name for p in PATTERNS]
    for pattern in result["patterns"]:
        assert set(pattern) == PATTERN_KEYS
    assert result["round_trips"]["extra"] == 0
    assert {"scoped_median_ms", "unscoped_median_ms", "ratio"} <= set(result["latency"])
    assert {"scoped_tps", "unscoped_tps", "ratio"} <= set(result["throughput"])
    assert (tmp_path / "results" / "tiny.json").is_file()
    assert chart.read_bytes().startswith(b"\x89PNG")
    # After the run nothing can log in as the role that reads every user's rows.
    assert _bypass_login_state(bench_db) == (False, True)
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(_libpq(bench_db.bypass_url)).close()


@pytest.mark.parametrize(
    "host", ["db.example.invalid", "ep-cool-1.us-east-2.aws.neon.tech", "192.0.2.10"]
)
def test_bench_refuses_a_remote_server_without_the_flag(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://postgres:secret@{host}:5432/postgres?connect_timeout=2"
    # No connection is tried: the refusal comes first (192.0.2.0/24 is TEST-NET-1, unrouted).
    assert cli.main(["bench", "--url", url, "--scale", "tiny"]) == 2
    error = capsys.readouterr().err
    assert f"{host} is not this machine" in error
    assert "--allow-remote-server" in error


def test_the_remote_check_lets_local_servers_through_and_the_flag_lets_any(
    bench_db: BenchDb,
) -> None:
    # Control for the test above: the test server (local) passes without the flag...
    admin, _, _ = prepare_database(bench_db.admin_url, bench_db.dbname)
    disable_bypass_login(admin)
    # ...and the flag gets a remote host past the check, to the connection attempt.
    url = "postgresql://postgres@db.example.invalid:5432/postgres?connect_timeout=2"
    with pytest.raises(psycopg.OperationalError):
        prepare_database(url, "todo_rls_bench_tiny", allow_remote=True)


def test_bench_refuses_a_non_superuser_url_and_says_why(
    bench_db: BenchDb, capsys: pytest.CaptureFixture[str]
) -> None:
    app_url = bench_db.app_url.set(drivername="postgresql").render_as_string(hide_password=False)
    assert cli.main(["bench", "--url", app_url, "--scale", "tiny"]) == 2
    error = capsys.readouterr().err
    assert f"role {BENCH_APP_ROLE} is not a superuser" in error
    assert "pass a superuser's URL with --url" in error
