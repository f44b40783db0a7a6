"""The bench's results as one JSON-ready dict, the targets they meet, and a text table."""

from typing import Any

# The targets, checked on the figures of one run.
MAX_PATTERN_RATIO = 1.10
MAX_LATENCY_RATIO = 1.05
MIN_THROUGHPUT_RATIO = 0.95
MAX_LIST_GROWTH = 1.5


def targets(result: dict[str, Any]) -> dict[str, bool]:
    """Which targets this run's figures meet."""
    patterns = result["patterns"]
    return {
        "pattern_ratio_at_most_1.10": all(p["ratio"] <= MAX_PATTERN_RATIO for p in patterns),
        "index_scans_only": all(p["index_scans_only"] for p in patterns),
        "no_extra_round_trips": result["round_trips"]["extra"] == 0,
        "latency_ratio_at_most_1.05": result["latency"]["ratio"] <= MAX_LATENCY_RATIO,
        "throughput_ratio_at_least_0.95": result["throughput"]["ratio"] >= MIN_THROUGHPUT_RATIO,
    }


def list_growth(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How the scoped first-page median grows from the smallest to the largest stored scale."""
    sized = sorted(results, key=lambda r: r["scale"]["tasks"])
    if len(sized) < 2:
        return None
    first = [_median(r, "list first page") for r in (sized[0], sized[-1])]
    growth = round(first[1] / first[0], 3)
    return {
        "from_tasks": sized[0]["scale"]["tasks"],
        "to_tasks": sized[-1]["scale"]["tasks"],
        "from_ms": first[0],
        "to_ms": first[1],
        "growth": growth,
        "at_most_1.5": growth <= MAX_LIST_GROWTH,
    }


def _median(result: dict[str, Any], name: str) -> float:
    medians = [p["rls_median_ms"] for p in result["patterns"] if p["name"] == name]
    return float(medians[0])


def _mark(held: bool) -> str:
    return "yes" if held else "NO"


def text_report(result: dict[str, Any]) -> str:
    """The human-readable summary of one run."""
    scale, machine = result["scale"], result["machine"]
    lines = [
        f"todo-rls bench, scale {scale['name']}: {scale['users']:,} users, {scale['tasks']:,} "
        f"tasks, {scale['conversations']:,} conversations, {scale['messages']:,} messages",
        f"machine: {machine['cpus']} CPUs, {machine['server']}, {result['iterations']} "
        "interleaved runs per pattern and side",
        "",
        f"{'pattern':<20} {'rls med':>8} {'rls p95':>8} {'nochk med':>9} {'expl med':>8} "
        f"{'expl p95':>8} {'ratio':>6} {'nochk':>6}  plan (app role, through the wrapper)",
    ]
    for p in result["patterns"]:
        lines.append(
            f"{p['name']:<20} {p['rls_median_ms']:>8.3f} {p['rls_p95_ms']:>8.3f} "
            f"{p['rls_without_check_median_ms']:>9.3f} {p['explicit_median_ms']:>8.3f} "
            f"{p['explicit_p95_ms']:>8.3f} {p['ratio']:>6.3f} {p['ratio_without_check']:>6.3f}  "
            + "; ".join(dict.fromkeys(p["plan_rls"]))
        )
        if p["plan_heaviest_user_rls"] != p["plan_rls"]:
            heaviest = "; ".join(dict.fromkeys(p["plan_heaviest_user_rls"]))
            lines.append(f"{'':<77}heaviest user: {heaviest}")
    trips, latency, tput, check = (
        result["round_trips"],
        result["latency"],
        result["throughput"],
        result["role_check"],
    )
    lines += [
        "(ms per request transaction: checkout, BEGIN, statements, COMMIT. rls: app role through "
        "the wrapper; nochk: app role, BEGIN + set_config without the wrapper's role check; "
        "expl: same SQL as a BYPASSRLS role; ratio = rls/expl, nochk = nochk/expl; plans for a "
        "typical user)",
        "",
        f"round trips per request: scoped {trips['scoped']}, unscoped {trips['unscoped']}, "
        f"extra {trips['extra']}",
        f"latency through a {latency['rtt_ms']} ms RTT proxy: scoped "
        f"{latency['scoped_median_ms']:.3f} ms, unscoped {latency['unscoped_median_ms']:.3f} ms, "
        f"ratio {latency['ratio']:.3f} (without the role check: "
        f"{latency['scoped_without_check_median_ms']:.3f} ms, "
        f"{latency['ratio_without_check']:.3f})",
        f"throughput with {tput['threads']} threads: scoped {tput['scoped_tps']:.0f}/s, "
        f"unscoped {tput['unscoped_tps']:.0f}/s, ratio {tput['ratio']:.3f} (without the role "
        f"check: {tput['scoped_without_check_tps']:.0f}/s, {tput['ratio_without_check']:.3f})",
        f"role check: server {check['server_check_ms'] * 1000:.0f} µs per transaction "
        f"(set_config with check {check['server_set_config_with_check_ms'] * 1000:.0f} µs, "
        f"without {check['server_set_config_only_ms'] * 1000:.0f} µs); a `select 1` transaction "
        f"scoped {check['select_1_scoped_median_ms']:.3f} ms vs unscoped "
        f"{check['select_1_unscoped_median_ms']:.3f} ms",
        "",
        "targets: "
        + ", ".join(f"{name} {_mark(held)}" for name, held in result["targets"].items()),
    ]
    growth = result.get("list_growth")
    if growth:
        lines.append(
            f"list first page median: {growth['from_ms']:.3f} ms at {growth['from_tasks']:,} "
            f"tasks -> {growth['to_ms']:.3f} ms at {growth['to_tasks']:,}: "
            f"x{growth['growth']:.2f} (target <= {MAX_LIST_GROWTH}: {_mark(growth['at_most_1.5'])})"
        )
    return "\n".join(lines)
