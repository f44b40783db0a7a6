"""The bench's results as one JSON-ready dict, the targets they meet, and a text table."""

from typing import Any

# The request the latency line is about (measure.REQUEST).
REQUEST_NAME = "list first page"
# The issue's targets, checked on the figures of one run.
MAX_PATTERN_RATIO = 1.10
MAX_LATENCY_RATIO = 1.05
MIN_THROUGHPUT_RATIO = 0.95
MAX_LIST_GROWTH = 1.5


MAX_VERIFIER_US = 10.0


def targets(result: dict[str, Any]) -> dict[str, bool]:
    """Which of issue 11's targets this run's figures meet (prepared statements on: the
    engines' default on a direct connection)."""
    patterns = result["patterns"]
    verifier = result["server_costs"]["verifier_per_statement_us"]
    return {
        "pattern_ratio_at_most_1.10": all(
            p["ratios"]["scoped/plain"] <= MAX_PATTERN_RATIO for p in patterns
        ),
        "index_scans_only": all(p["index_scans_only"] for p in patterns),
        "no_extra_round_trips": result["round_trips"]["extra"] == 0
        and result["round_trips"]["extra_unprepared"] == 0,
        "latency_ratio_at_most_1.05": result["latency"]["ratios"]["scoped/plain"]
        <= MAX_LATENCY_RATIO,
        "throughput_ratio_at_least_0.95": result["throughput"]["ratios"]["scoped/plain"]
        >= MIN_THROUGHPUT_RATIO,
        "verifier_per_statement_at_most_10us": max(verifier.values()) <= MAX_VERIFIER_US,
    }


def missed_targets(result: dict[str, Any]) -> list[str]:
    """The names of the targets this run missed (the list-growth one too, when measured)."""
    missed = [name for name, held in result["targets"].items() if not held]
    growth = result.get("list_growth")
    if growth is not None and not growth["at_most_1.5"]:
        missed.append("list_growth_at_most_1.5")
    return missed


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
    medians = [p["median_ms"]["scoped"] for p in result["patterns"] if p["name"] == name]
    return float(medians[0])


def _mark(held: bool) -> str:
    return "yes" if held else "NO"


def _cell(values: dict[str, float], key: str, width: int, digits: int = 3) -> str:
    value = values.get(key)
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _pattern_table(patterns: list[dict[str, Any]], forms: bool) -> list[str]:
    head = (
        f"{'pattern':<19}{'scoped':>8}{'set_cfg':>8}{'plain':>8}{'ratio':>7} |"
        f"{'scoped':>8}{'plain':>8}{'ratio':>7} |{'scoped':>7}{'plain':>7}"
    )
    over = f"{'':<19}{'prepared statements on (default)':^31} |{'off':^23} |{'off/on':^14}"
    if forms:
        head += f" |{'bare':>8}{'b/ip':>6}{'bare':>8}{'b/ip':>6}"
        over += f" |{'bare form: on':^14}{'off':^14}"
    lines = [over, head]
    for p in patterns:
        m, r = p["median_ms"], p["ratios"]
        line = (
            f"{p['name']:<19}{_cell(m, 'scoped', 8)}{_cell(m, 'set_config', 8)}"
            f"{_cell(m, 'plain', 8)}{_cell(r, 'scoped/plain', 7)} |"
            f"{_cell(m, 'scoped_unprepared', 8)}{_cell(m, 'plain_unprepared', 8)}"
            f"{_cell(r, 'scoped/plain unprepared', 7)} |"
            f"{_cell(r, 'scoped unprepared/prepared', 7, 2)}"
            f"{_cell(r, 'plain unprepared/prepared', 7, 2)}"
        )
        if forms:
            line += (
                f" |{_cell(m, 'bare', 8)}{_cell(r, 'bare/initplan', 6, 2)}"
                f"{_cell(m, 'bare_unprepared', 8)}{_cell(r, 'bare/initplan unprepared', 6, 2)}"
            )
        lines.append(line)
    return lines


def _plan_table(patterns: list[dict[str, Any]], forms: bool) -> list[str]:
    lines = [
        f"{'pattern':<19}{'p95 scoped':>11}{'p95 plain':>10}{'cpu scoped':>11}"
        f"{'cpu set_cfg':>12}{'cpu plain':>10}"
        "  plan (app role, typical user); where the verifier runs"
    ]
    for p in patterns:
        q, c = p["p95_ms"], p["client_cpu_ms"]
        where = "; ".join(p["verifier_at"])
        if forms and "verifier_at_bare_form" in p:
            where += " | bare form: " + "; ".join(p["verifier_at_bare_form"])
        lines.append(
            f"{p['name']:<19}{_cell(q, 'scoped', 11)}{_cell(q, 'plain', 10)}"
            f"{_cell(c, 'scoped', 11)}{_cell(c, 'set_config', 12)}{_cell(c, 'plain', 10)}  "
            + "; ".join(dict.fromkeys(p["plan_rls"]))
            + f"; {where}"
        )
        if p["plan_heaviest_user_rls"] != p["plan_rls"]:
            heaviest = "; ".join(dict.fromkeys(p["plan_heaviest_user_rls"]))
            lines.append(f"{'':<73}heaviest user: {heaviest}")
    return lines


def text_report(result: dict[str, Any]) -> str:
    """The human-readable summary of one run."""
    scale, machine, load = result["scale"], result["machine"], result["load_average"]
    forms = result["policy_forms"] is not None
    lines = [
        f"todo-rls bench, scale {scale['name']}: {scale['users']:,} users, {scale['tasks']:,} "
        f"tasks, {scale['conversations']:,} conversations, {scale['messages']:,} messages",
        f"machine: {machine['cpus']} CPUs, {machine['server']}, {result['iterations']} "
        "interleaved runs per pattern and side; load average (1 min) "
        f"{load['before']:.2f} before, {load['after']:.2f} after",
        "",
        "median ms per request transaction (checkout, BEGIN, statements, COMMIT). scoped: the "
        "wrapper as the app login (RLS, verified context); set_cfg: same login and policies, "
        "opened by one BEGIN + set_config message instead of the wrapper; plain: the same SQL "
        "as a BYPASSRLS login, no hook; ratio = scoped/plain"
        + ("; bare: scoped, policies in the Citus form; b/ip = bare/initplan" if forms else ""),
        *_pattern_table(result["patterns"], forms),
        "",
        "p95 ms and client CPU ms per request (this process: Python, SQLAlchemy, psycopg), "
        "prepared statements on",
        *_plan_table(result["patterns"], forms),
        "",
    ]
    trips, latency, tput, costs = (
        result["round_trips"],
        result["latency"],
        result["throughput"],
        result["server_costs"],
    )
    lm, lr, tps, tr = latency["median_ms"], latency["ratios"], tput["tps"], tput["ratios"]
    server, verifier, empty = (
        costs["server_ms"],
        costs["verifier_per_statement_us"],
        costs["empty_transaction"],
    )
    lines += [
        f"round trips per request: scoped {trips['scoped']}, plain {trips['plain']}, extra "
        f"{trips['extra']}; prepared statements off: {trips['scoped_unprepared']}, "
        f"{trips['plain_unprepared']}, extra {trips['extra_unprepared']}",
        f"latency through a {latency['rtt_ms']} ms RTT proxy ({REQUEST_NAME}): scoped "
        f"{lm['scoped']:.3f} ms, plain {lm['plain']:.3f} ms, ratio {lr['scoped/plain']:.3f}; "
        f"off: {lm['scoped_unprepared']:.3f} vs {lm['plain_unprepared']:.3f} ms, ratio "
        f"{lr['scoped/plain unprepared']:.3f}; set_cfg {lm['set_config']:.3f} ms",
        f"throughput with {tput['threads']} threads: scoped {tps['scoped']:.0f}/s, plain "
        f"{tps['plain']:.0f}/s, ratio {tr['scoped/plain']:.3f}; off: "
        f"{tps['scoped_unprepared']:.0f}/s vs {tps['plain_unprepared']:.0f}/s, ratio "
        f"{tr['scoped/plain unprepared']:.3f}",
        f"verifier: {costs['verifier_per_call_us']:.1f} µs per call; per statement over reading "
        f"the bare setting: {verifier['first']:.1f} µs in a transaction's first statement, "
        f"{verifier['later']:.1f} µs in a later one",
        f"server time per transaction: begin_scope {server['begin_scope'] * 1000:.0f} µs "
        f"({server['begin_scope_checking_prepared'] * 1000:.0f} µs with its check for "
        f"SQL-prepared statements, done when prepared statements are on) vs a bare set_config "
        f"{server['set_config'] * 1000:.0f} µs",
        f"role check: {costs['role_check_us']:.0f} µs of server time each time it runs: on a "
        "connection's first scoped transaction, then at most once a minute per connection "
        "(ADR 0007), not per transaction",
        "empty `select 1` transaction, median ms (client CPU ms): "
        + ", ".join(
            f"{name} {empty[name]['median_ms']:.3f} ({empty[name]['client_cpu_ms']:.3f})"
            for name in ("scoped", "scoped_unprepared", "set_config", "plain")
            if name in empty
        )
        + "; the wrapper's Python, µs each time: "
        + ", ".join(
            f"{name.removesuffix('_us').replace('_', ' ')} {us:.1f}"
            for name, us in costs["client_us"].items()
        ),
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
