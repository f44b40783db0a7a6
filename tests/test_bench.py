"""`todo-rls bench`: index-only plans, no extra round trip, and a smoke of the whole command.

Nothing here is timed; the bench prints figures, these tests check what must hold regardless.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, text
from sqlmodel import Session

from todo_rls import cli
from todo_rls.bench.data import generate
from todo_rls.bench.measure import engine, measure_round_trips
from todo_rls.bench.patterns import PATTERNS, Pattern
from todo_rls.bench.plans import index_scans_only, plan_of
from todo_rls.bench.scales import SCALES
from todo_rls.bench.setup import BENCH_APP_ROLE, admin_connect, prepare_database
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
        with admin_connect(admin) as conn:
            generate(conn, TINY)  # ends with ANALYZE
            subjects = pick_subjects(conn)
        yield BenchDb(admin_url, dbname, admin, app_url, bypass_url, subjects)


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


def test_bench_tiny_json_smoke(
    bench_db: BenchDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_bench_refuses_a_non_superuser_url_and_says_why(
    bench_db: BenchDb, capsys: pytest.CaptureFixture[str]
) -> None:
    app_url = bench_db.app_url.set(drivername="postgresql").render_as_string(hide_password=False)
    assert cli.main(["bench", "--url", app_url, "--scale", "tiny"]) == 2
    error = capsys.readouterr().err
    assert f"role {BENCH_APP_ROLE} is not a superuser" in error
    assert "pass a superuser's URL with --url" in error
