"""`todo-rls bench`: set up (or reuse) the scale's database, measure everything, report."""

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import URL

from todo_rls.bench import chart, data, measure
from todo_rls.bench.report import list_growth, targets, text_report
from todo_rls.bench.scales import DEFAULT_SCALE, SCALES, Scale
from todo_rls.bench.setup import (
    BENCH_APP_ROLE,
    BENCH_BYPASS_ROLE,
    admin_connect,
    bench_database,
    disable_bypass_login,
    prepare_database,
)
from todo_rls.bench.subjects import pick_subjects
from todo_rls.embedded import DEFAULT_DATA_DIR, embedded_database_url

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
        f"since the bench creates its database and login roles {BENCH_APP_ROLE} (member of "
        f"todo_app) and {BENCH_BYPASS_ROLE} (BYPASSRLS, NOLOGIN again after the run)",
    )
    parser.add_argument(
        "--allow-remote-server",
        action="store_true",
        help=f"run against a server that is not this machine (it gets the BYPASSRLS login role "
        f"{BENCH_BYPASS_ROLE}, valid for a day and disabled after the run)",
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
    parser.add_argument("--rtt-ms", type=float, default=2.0, help="proxy round trip (default 2)")
    parser.add_argument(
        "--threads", type=_positive, default=8, help="throughput clients (default 8)"
    )
    parser.add_argument("--iterations", type=_positive, help="timed runs per pattern and side")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
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


def measure_all(args: argparse.Namespace, scale: Scale) -> dict[str, Any]:
    """Set up, fill and measure; the run's result as a JSON-ready dict. The bypass login is
    disabled afterwards, whether the run succeeded or not."""
    dbname = args.database or bench_database(scale.name)
    admin, app_url, bypass_url = prepare_database(
        _admin_url(args), dbname, allow_remote=args.allow_remote_server
    )
    try:
        return _measure(args, scale, admin, app_url, bypass_url)
    finally:
        disable_bypass_login(admin)


def _measure(
    args: argparse.Namespace, scale: Scale, admin: URL, app_url: URL, bypass_url: URL
) -> dict[str, Any]:
    """Fill (unless filled) and measure the database admin names."""
    dbname = admin.database
    generation = _fill(admin, scale)
    with admin_connect(admin) as conn:
        subjects = pick_subjects(conn)
    iterations = args.iterations or scale.iterations
    app, bypass = measure.engine(app_url), measure.engine(bypass_url)
    try:
        patterns = measure.measure_patterns(app, bypass, subjects, iterations)
    finally:
        app.dispose()
        bypass.dispose()
    _say("counting round trips, then latency, throughput and the role check ...")
    result: dict[str, Any] = {
        "scale": {
            "name": scale.name,
            "users": scale.users,
            "tasks": scale.tasks,
            "conversations": scale.conversations,
            "messages": scale.messages,
        },
        "machine": _machine(admin),
        "database": dbname,
        "generation_seconds": None if generation is None else round(generation, 1),
        "iterations": iterations,
        "subjects": len(subjects),
        "patterns": patterns,
        "round_trips": measure.measure_round_trips(app_url, bypass_url, subjects[0]),
        "latency": measure.measure_latency(
            app_url, bypass_url, subjects, args.rtt_ms, max(iterations // 4, 5)
        ),
        "throughput": measure.measure_throughput(
            app_url, bypass_url, subjects, args.threads, *_turns(iterations)
        ),
        "role_check": measure.measure_role_check(app_url, subjects[0], iterations),
    }
    result["targets"] = targets(result)
    return result


def _stored_results(folder: Path, machine: dict[str, Any]) -> list[dict[str, Any]]:
    """The last result of each scale measured on the same machine and server as this run."""
    results = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    # A scale measured on another server (say the embedded PostgreSQL 18) is not comparable.
    return [result for result in results if result["machine"] == machine]


def run(args: argparse.Namespace) -> int:
    """Run `todo-rls bench`; 0 once everything was measured (targets are reported, not enforced)."""
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
    return 0
