"""`todo-rls bench`: set up (or reuse) the scale's database, measure everything, report."""

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import URL

from todo_rls.bench import chart, data, measure, policyforms
from todo_rls.bench.report import list_growth, missed_targets, targets, text_report
from todo_rls.bench.scales import DEFAULT_SCALE, SCALES, Scale
from todo_rls.bench.servercost import measure_server_costs
from todo_rls.bench.setup import (
    BENCH_ROLE_PREFIX,
    BenchLogins,
    admin_connect,
    bench_database,
    drop_bench_roles,
    prepare_database,
    run_signing_key,
)
from todo_rls.bench.sides import PATTERN_SIDES, POLICY_FORM_SIDES, Targets
from todo_rls.bench.subjects import pick_subjects
from todo_rls.embedded import DEFAULT_DATA_DIR, embedded_database_url
from todo_rls.identity import SigningKey

DEFAULT_RESULTS_DIR = Path(".todo-rls") / "bench"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `todo-rls bench`."""
    parser.add_argument(
        "--url",
        help="admin URL (default: $DATABASE_URL; none: an embedded PostgreSQL): a superuser, "
        f"since the bench creates its database and, for the length of the run, two login roles "
        f"{BENCH_ROLE_PREFIX}_app_* (member of todo_app) and {BENCH_ROLE_PREFIX}_bypass_* "
        "(BYPASSRLS), both dropped when it ends",
    )
    parser.add_argument(
        "--allow-remote-server",
        action="store_true",
        help="run against a server that is not this machine (it gets a BYPASSRLS login role for "
        "the length of the run, with a random password valid for a day)",
    )
    parser.add_argument(
        "--scale",
        choices=list(SCALES),
        default=DEFAULT_SCALE,
        help="data size: tiny (5,000 tasks), 100k, 1m (10,000 users, 1,000,000 tasks; the "
        "default) or 10m",
    )
    parser.add_argument(
        "--database",
        help="database to fill and measure (default: todo_rls_bench_<scale>, reused once filled)",
    )
    parser.add_argument(
        "--rtt-ms", type=float, default=1.0, help="round trip of the delay proxy (default 1)"
    )
    parser.add_argument(
        "--threads", type=_positive, default=8, help="throughput clients (default 8)"
    )
    parser.add_argument("--iterations", type=_positive, help="timed runs per pattern and side")
    parser.add_argument(
        "--policy-forms",
        action="store_true",
        help="also time the scoped side with the policies in the bare form Citus accepts "
        "(user_id = todo_rls.current_user_id()), against today's InitPlan form, interleaved: on "
        "a copy of the bench database, dropped at the end",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--fail-on-missed-targets",
        action="store_true",
        help="exit 1 when a target is missed (default: report it, with a note, and exit 0; "
        "timings on a shared or busy machine swing from run to run)",
    )
    parser.add_argument("--chart", type=Path, help="write the latency-vs-size PNG to this path")
    parser.add_argument(
        "--results-dir",  # one JSON file per scale
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help=f"where the last result of each scale is kept for the chart "
        f"(default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"data folder of the embedded server, used when no URL is given "
        f"(default: {DEFAULT_DATA_DIR})",
    )


def _admin_url(args: argparse.Namespace) -> str:
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    if url:
        return url
    return embedded_database_url(args.data_dir or DEFAULT_DATA_DIR, dbname="postgres")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fill(admin: URL, scale: Scale) -> float | None:
    """Generate the data unless the database holds this scale already; seconds it took."""
    with admin_connect(admin) as conn:
        if data.is_populated(conn, scale):
            _say(f"reusing the data of scale {scale.name} in database {admin.database!r}")
            return None
        seconds = data.generate(conn, scale)
    _say(f"generated scale {scale.name} in {seconds:.1f} s")
    return seconds


def _machine(admin: URL) -> dict[str, Any]:
    with admin_connect(admin) as conn:
        row = conn.execute("select pg_catalog.version()").fetchall()[0]
    server = " ".join(str(row[0]).split()[:2])
    return {"cpus": os.cpu_count(), "server": server, "python": platform.python_version()}


def _turns(iterations: int) -> tuple[float, int]:
    """Seconds per throughput turn and turns per side: a full run takes ~12 s, a smoke ~1 s."""
    return (1.0, 6) if iterations >= 100 else (0.25, 2)


def _load() -> float:
    """The 1-minute load average: on a shared machine, what else was running."""
    return round(os.getloadavg()[0], 2)


def measure_all(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    """Set up, fill and measure; the run's result as a JSON-ready dict. The run's login roles
    (and the bare-form copy) are dropped afterwards, whether it succeeded or not."""
    dbname = args.database or bench_database(scale.name)
    logins = prepare_database(_admin_url(args), dbname, allow_remote=args.allow_remote_server)
    try:
        with run_signing_key(logins.admin) as key:
            generation = _fill(logins.admin, scale)
            if not args.policy_forms:
                return _measure(args, scale, logins, key, generation, None)
            _say("copying the database for the bare policy form ...")
            with policyforms.bare_form_copy(logins.admin) as copy:
                return _measure(args, scale, logins, key, generation, copy)
    finally:
        drop_bench_roles(logins)


def _measure(
    args: argparse.Namespace,
    scale: Scale,
    logins: BenchLogins,
    key: SigningKey,
    generation: float | None,
    bare_copy: str | None,
) -> dict[str, Any]:
    """Measure the filled database logins.admin names (and the bare-form copy, if any)."""
    load_before = _load()
    with admin_connect(logins.admin) as conn:
        subjects = pick_subjects(conn)
    iterations = args.iterations or scale.iterations
    targets_ = Targets(logins.app_url, logins.bypass_url, bare_copy)
    sides = PATTERN_SIDES + (POLICY_FORM_SIDES if bare_copy else ())
    patterns = measure.measure_patterns(targets_, key, subjects, iterations, sides)
    _say("counting round trips, then latency, throughput and the server costs ...")
    result: dict[str, Any] = {
        "scale": {
            "name": scale.name,
            "users": scale.users,
            "tasks": scale.tasks,
            "conversations": scale.conversations,
            "messages": scale.messages,
        },
        "machine": _machine(logins.admin),
        "database": logins.admin.database,
        "generation_seconds": None if generation is None else round(generation, 1),
        "iterations": iterations,
        "subjects": len(subjects),
        "policy_forms": None
        if bare_copy is None
        else {
            "initplan": policyforms.INITPLAN_FORM,
            "bare": policyforms.BARE_FORM,
            "tables": list(policyforms.OWNED_TABLES),
        },
        "patterns": patterns,
        "round_trips": measure.measure_round_trips(targets_, key, subjects[0]),
        "latency": measure.measure_latency(
            targets_, key, subjects, args.rtt_ms, max(iterations // 4, 5)
        ),
        "throughput": measure.measure_throughput(
            targets_, key, subjects, args.threads, *_turns(iterations)
        ),
        "server_costs": measure_server_costs(targets_, key, subjects[0], iterations),
    }
    result["load_average"] = {"before": load_before, "after": _load()}
    result["targets"] = targets(result)
    return result


def _stored_results(folder: Path, machine: dict[str, Any]) -> list[dict[str, Any]]:
    """The last result of each scale measured on the same machine and server as this run."""
    results = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    # A scale measured on another server (say the embedded PostgreSQL 18) is not comparable,
    # and results of the bench before its sides (no "median_ms" per side) cannot be charted.
    return [
        result
        for result in results
        if result["machine"] == machine
        and all(isinstance(p.get("median_ms"), dict) for p in result["patterns"])
    ]


def _verdict(missed: list[str], fail_on_missed: bool) -> int:
    """The exit code for a finished run; a missed target is a note unless fail_on_missed."""
    if not missed:
        return 0
    names = ", ".join(missed)
    if fail_on_missed:
        _say(f"todo-rls bench: missed {len(missed)} target(s): {names} (--fail-on-missed-targets)")
        return 1
    _say(
        f"note: missed {len(missed)} target(s): {names}. Timings swing from run to run on a "
        "shared or busy machine (docs/benchmarks.md); rerun on a quiet one before reading much "
        "into it, and pass --fail-on-missed-targets to make a miss fail the command."
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run `todo-rls bench`: 0 once everything was measured, 1 if a target was missed and
    --fail-on-missed-targets was given."""
    scale = SCALES[args.scale]
    result = measure_all(args, scale)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{scale.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    stored = _stored_results(args.results_dir, result["machine"])
    result["list_growth"] = list_growth(stored)
    if args.chart:
        chart.draw(stored, args.chart)
        _say(f"chart of {len(stored)} scale(s) written to {args.chart}")
    print(json.dumps(result, indent=2) if args.json else text_report(result))
    return _verdict(missed_targets(result), args.fail_on_missed_targets)
