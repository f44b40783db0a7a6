"""`todo-rls bench`: index-only plans, no extra round trip, and a smoke of the whole command.

Nothing here is timed; the bench prints figures, these tests check what must hold regardless.
"""

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import URL, Engine, text
from sqlmodel import Session

import todo_rls.bench.run as bench_run
import todo_rls.cli as cli
from todo_rls.bench.data import generate
from todo_rls.bench.measure import measure_round_trips
from todo_rls.bench.patterns import PATTERNS, Pattern
from todo_rls.bench.plans import index_scans_only, plan_of, verifier_at
from todo_rls.bench.policyforms import bare_form_copy, forms_in_use
from todo_rls.bench.progress import progress
from todo_rls.bench.report import missed_targets, targets, text_report
from todo_rls.bench.run import _verdict
from todo_rls.bench.scales import SCALES
from todo_rls.bench.setup import (
    BENCH_ROLE_PREFIX,
    admin_connect,
    drop_bench_roles,
    prepare_database,
    run_signing_key,
)
from todo_rls.bench.sides import BARE, SCOPED, Targets, side_engine
from todo_rls.bench.subjects import Subject, pick_subjects
from todo_rls.identity import SigningKey
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
    "policy_forms",
    "patterns",
    "round_trips",
    "latency",
    "throughput",
    "server_costs",
    "load_average",
    "targets",
    "list_growth",
}
PATTERN_KEYS = {
    "name",
    "median_ms",
    "p95_ms",
    "client_cpu_ms",
    "ratios",
    "plan_rls",
    "plan_explicit",
    "plan_heaviest_user_rls",
    "heaviest_user_tasks",
    "index_scans_only",
    "verifier_at",
}
SIDES = {"scoped", "scoped_unprepared", "set_config", "plain", "plain_unprepared"}
BARE_SIDES = {"bare", "bare_unprepared"}


@dataclass(frozen=True)
class BenchDb:
    """A scratch database filled at scale tiny, and the bench's URLs of it."""

    admin_url: str  # of the server's postgres database, as the CLI is given it
    dbname: str
    admin: URL
    app_url: URL
    bypass_url: URL
    subjects: list[Subject]
    key: SigningKey  # the run's key, installed in the database and in $TODO_RLS_SIGNING_KEY

    @property
    def targets(self) -> Targets:
        return Targets(self.app_url, self.bypass_url)

    @property
    def typical(self) -> Subject:
        """The median of the subjects by task count: a realistic user, not the heaviest."""
        return self.subjects[len(self.subjects) // 2]


@pytest.fixture(scope="module")
def bench_db(pg_server: PgServer) -> Iterator[BenchDb]:
    """The bench's own setup and data generation, on a database dropped after the module."""
    admin_url = pg_server.url("postgres").render_as_string(hide_password=False)
    with pg_server.scratch_database() as dbname:
        logins = prepare_database(admin_url, dbname)
        try:
            with admin_connect(logins.admin) as conn:
                generate(conn, TINY)  # ends with ANALYZE
                subjects = pick_subjects(conn)
            with run_signing_key(logins.admin) as key:
                yield BenchDb(
                    admin_url,
                    dbname,
                    logins.admin,
                    logins.app_url,
                    logins.bypass_url,
                    subjects,
                    key,
                )
        finally:
            drop_bench_roles(logins)  # as `todo-rls bench` does: no login role left


@pytest.fixture
def bench_app_engine(bench_db: BenchDb) -> Iterator[Engine]:
    # Per test: --policy-forms copies the database, which needs it free of connections.
    """The library's engine as the bench's app login role (a member of todo_app)."""
    app = side_engine(bench_db.targets, SCOPED, bench_db.key)
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


def test_generated_rows_leave_no_audit_trail_and_the_triggers_back_on(bench_db: BenchDb) -> None:
    with admin_connect(bench_db.admin) as conn:
        counts = conn.execute("select count(*) from audit_event").fetchall()[0]
        triggers = conn.execute(
            "select tgrelid::regclass::text, tgname::text, tgenabled::text from pg_trigger"
            " where tgname like '%_audit' order by 1"
        ).fetchall()
    assert counts == (0,)  # the load is no user's action
    assert triggers == [  # and a user's later writes are audited again
        ("conversation", "conversation_audit", "O"),
        ("message", "message_audit", "O"),
        ("task", "task_audit", "O"),
    ]


def _assert_app_role_under_rls(session: Session, bench_app_role: str) -> None:
    role, active = (
        session.connection()
        .execute(text("select current_user::text, pg_catalog.row_security_active('public.task')"))
        .one()
    )
    assert (role, active) == (bench_app_role, True)


@pytest.mark.parametrize("pattern", PATTERNS, ids=[p.name for p in PATTERNS])
def test_pattern_plans_only_index_scans_as_the_app_role(
    bench_db: BenchDb, bench_app_engine: Engine, pattern: Pattern
) -> None:
    subject = bench_db.typical

    @contextmanager
    def app_session() -> Iterator[Session]:
        with scoped_session(bench_app_engine, subject.user_id) as session:
            _assert_app_role_under_rls(session, str(bench_db.app_url.username))
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
            _assert_app_role_under_rls(session, str(bench_db.app_url.username))
            for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                session.connection().execute(
                    text("select pg_catalog.set_config(:name, 'off', true)"), {"name": setting}
                )
            yield session

    nodes = plan_of(no_index_session(), PATTERNS[0], subject)
    assert nodes == ["Seq Scan on task"]
    assert not index_scans_only(nodes)


def test_scoped_request_takes_no_more_round_trips_than_unscoped(bench_db: BenchDb) -> None:
    trips = measure_round_trips(bench_db.targets, bench_db.key, bench_db.typical)
    # Control for the counter: an unscoped transaction is BEGIN, query, COMMIT (RLS-FACTS).
    assert trips["plain"] == trips["plain_unprepared"] == 3, trips
    assert trips["scoped"] == trips["scoped_unprepared"] == 3, trips
    assert trips["extra"] == trips["extra_unprepared"] == 0


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _bench_roles(bench_db: BenchDb) -> set[str]:
    """The bench login roles of this process on the server (todo_rls_bench_*_<pid>_*)."""
    pattern = f"^{BENCH_ROLE_PREFIX}_(app|bypass)_{os.getpid()}_[0-9a-f]+$"
    with admin_connect(bench_db.admin) as conn:
        rows = conn.execute(
            "select rolname::text from pg_catalog.pg_roles where rolname ~ %s", (pattern,)
        ).fetchall()
    return {name for (name,) in rows}


@pytest.mark.slow  # the whole bench, a few seconds: the fast tier keeps the isolation tests
def test_bench_tiny_json_smoke_then_its_login_roles_are_gone(
    bench_db: BenchDb,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Throughput turns are fixed wall-clock time (2.5 s of the smoke at the CLI's 0.25 s); no
    # figure is checked here, so a fifth of that, still two rotated turns per side, will do.
    monkeypatch.setattr(bench_run, "_turns", lambda iterations: (0.05, 2))
    # Positive control: the fixture's BYPASSRLS role logs in, with a password that expires.
    bypass = str(bench_db.bypass_url.username)
    with psycopg.connect(_libpq(bench_db.bypass_url)) as conn:
        assert conn.execute("select current_user::text").fetchone() == (bypass,)
        expires = conn.execute(
            "select rolbypassrls, rolvaliduntil between now() and now() + interval '25 hours'"
            " from pg_catalog.pg_roles where rolname = current_user"
        ).fetchone()
    assert expires == (True, True)
    before = _bench_roles(bench_db)
    assert before == {str(bench_db.app_url.username), bypass}
    chart = tmp_path / "bench.png"
    argv = ["bench", "--url", bench_db.admin_url, "--scale", "tiny", "--database"]
    argv += [bench_db.dbname, "--iterations", "3", "--threads", "2", "--json", "--policy-forms"]
    argv += ["--results-dir", str(tmp_path / "results"), "--chart", str(chart)]
    assert cli.main(argv) == 0  # missed targets are a note without --fail-on-missed-targets
    result = json.loads(capsys.readouterr().out)
    assert set(result) == TOP_LEVEL_KEYS
    assert result["scale"]["name"] == "tiny" and result["database"] == bench_db.dbname
    assert result["generation_seconds"] is None, "the populated database was reused"
    assert result["policy_forms"]["bare"] == "user_id = todo_rls.current_user_id()"
    assert [p["name"] for p in result["patterns"]] == [p.name for p in PATTERNS]
    for pattern in result["patterns"]:
        assert set(pattern) == PATTERN_KEYS | {"verifier_at_bare_form"}
        assert set(pattern["median_ms"]) == SIDES | BARE_SIDES
        assert {"scoped/plain", "scoped unprepared/prepared", "bare/initplan"} <= set(
            pattern["ratios"]
        )
        assert pattern["verifier_at"] == ["InitPlan (once per statement)"], pattern["name"]
    assert result["round_trips"]["extra"] == result["round_trips"]["extra_unprepared"] == 0
    assert set(result["latency"]["median_ms"]) == SIDES
    assert set(result["throughput"]["tps"]) == SIDES - {"set_config"}
    assert result["throughput"]["seconds_per_turn"] == 0.05  # the patch above took
    costs = result["server_costs"]
    assert set(costs["verifier_per_statement_us"]) == {"first", "later"}
    assert costs["verifier_per_call_us"] > 0 and costs["role_check_us"] > 0
    assert set(costs["client_us"]) == {
        "scope_us",
        "install_hook_us",
        "execution_options_us",
        "search_path_us",
        "sign_us",
    }
    assert set(costs["empty_transaction"]) == {"scoped", "scoped_unprepared", "set_config", "plain"}
    assert (tmp_path / "results" / "tiny.json").is_file()
    assert chart.read_bytes().startswith(b"\x89PNG")
    # The run made two roles of its own and dropped both: only the fixture's are left.
    assert _bench_roles(bench_db) == before
    # ... dropped its copy, and left the bench database's policies as the migrations made them.
    assert _bare_copies(bench_db) == []
    with admin_connect(bench_db.admin) as conn:
        assert forms_in_use(conn) == {"initplan"}
    text = text_report(result)
    assert "role check: " in text
    assert "at most once a minute per connection (ADR 0007), not per transaction" in text


def _bare_copies(bench_db: BenchDb) -> list[str]:
    with admin_connect(bench_db.admin) as conn:
        rows = conn.execute(
            "select datname::text from pg_catalog.pg_database where datname like %s",
            (f"{bench_db.dbname}_bare_%",),
        ).fetchall()
    return [name for (name,) in rows]


def test_bare_form_copy_isolates_users_and_calls_the_verifier_once_per_statement(
    bench_db: BenchDb,
) -> None:
    subject, other = bench_db.typical, bench_db.subjects[0]
    with bare_form_copy(bench_db.admin) as copy:
        assert _bare_copies(bench_db) == [copy]
        with admin_connect(bench_db.admin, copy) as conn:
            assert forms_in_use(conn) == {"bare"}
        with admin_connect(bench_db.admin) as conn:
            assert forms_in_use(conn) == {"initplan"}  # the bench database is untouched
        app = side_engine(
            Targets(bench_db.app_url, bench_db.bypass_url, copy),
            BARE,
            bench_db.key,
        )
        try:
            with scoped_session(app, subject.user_id) as session:
                _assert_app_role_under_rls(session, str(bench_db.app_url.username))
                mine, others = (
                    session.connection()
                    .execute(
                        text("select count(*), count(*) filter (where user_id <> :me) from task"),
                        {"me": subject.user_id},
                    )
                    .one()
                )
                # Positive control first: all of the user's tasks, then none of anyone else's.
                assert mine == subject.tasks and others == 0
                hidden = session.connection().execute(
                    text("select count(*) from task where user_id = :other"),
                    {"other": other.user_id},
                )
                assert hidden.scalar_one() == 0
            for pattern in PATTERNS:
                places = verifier_at(scoped_session(app, subject.user_id), pattern, subject)
                assert places, pattern.name
                assert not [p for p in places if "per row" in p], (pattern.name, places)
        finally:
            app.dispose()
    assert _bare_copies(bench_db) == []


def _result(ratio: float, growth: bool | None = None) -> dict[str, Any]:
    """A bench result with one pattern of ratio and, if given, the list-growth verdict."""
    result: dict[str, Any] = {
        "patterns": [{"ratios": {"scoped/plain": ratio}, "index_scans_only": True}],
        "round_trips": {"extra": 0, "extra_unprepared": 0},
        "latency": {"ratios": {"scoped/plain": 1.0}},
        "throughput": {"ratios": {"scoped/plain": 1.0}},
        "server_costs": {"verifier_per_statement_us": {"first": 5.0, "later": 5.0}},
    }
    result["targets"] = targets(result)
    if growth is not None:
        result["list_growth"] = {"at_most_1.5": growth}
    return result


def test_missed_targets_exit_1_only_when_asked_and_otherwise_say_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert missed_targets(_result(1.0, growth=True)) == []
    assert _verdict(missed_targets(_result(1.0)), fail_on_missed=True) == 0  # control
    missed = missed_targets(_result(1.5, growth=False))
    assert missed == ["pattern_ratio_at_most_1.10", "list_growth_at_most_1.5"]
    assert _verdict(missed, fail_on_missed=False) == 0
    note = capsys.readouterr().err
    assert "note: missed 2 target(s)" in note and "--fail-on-missed-targets" in note
    assert "shared or busy machine" in note
    assert _verdict(missed, fail_on_missed=True) == 1
    assert "missed 2 target(s): pattern_ratio_at_most_1.10" in capsys.readouterr().err


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
    drop_bench_roles(prepare_database(bench_db.admin_url, bench_db.dbname))
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
    assert f"role {bench_db.app_url.username} is not a superuser" in error
    assert "pass a superuser's URL with --url" in error


class _Stream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _report_two_tables(stream: _Stream) -> str:
    with progress(30, stream) as report:
        report.start("task", 20)
        report.advance(10)
        report.advance(10)
        report.start("message", 10)
        report.advance(10)
    return stream.getvalue()


def test_progress_off_a_terminal_is_one_line_per_table_without_tqdm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails
    out = _report_two_tables(_Stream(tty=False))
    assert out == "generating task: 20 rows ...\ngenerating message: 10 rows ...\n"


def test_progress_on_a_terminal_is_a_bar_or_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bar = _report_two_tables(_Stream(tty=True))
    assert "\r" in bar and "generating message" in bar and "100%" in bar  # tqdm's bar
    monkeypatch.setitem(sys.modules, "tqdm", None)
    lines = _report_two_tables(_Stream(tty=True))
    assert lines.splitlines() == [
        "(no progress bar: tqdm is not installed; pip install 'todo-rls[bench]')",
        "generating task: 20 rows ...",
        "generating message: 10 rows ...",
    ]


@pytest.mark.slow  # a fresh interpreter
def test_the_cli_and_the_bench_load_without_the_bench_extra() -> None:
    # tqdm and matplotlib are the bench extra's: without them every command still loads.
    script = (
        "import sys; sys.modules['tqdm'] = sys.modules['matplotlib'] = None\n"
        "from todo_rls import cli\n"
        "import todo_rls.bench.data\n"
        "cli.build_parser().parse_args(['bench', '--scale', 'tiny'])\n"
        "print('loaded')"
    )
    result = subprocess.run(  # noqa: S603 - our interpreter, a fixed script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded"
