"""The scan nodes of each pattern's statements, from EXPLAIN (format json) as it runs."""

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, event
from sqlmodel import Session

from todo_rls.bench.patterns import Pattern
from todo_rls.bench.subjects import Subject

OWNED_TABLES = ("task", "conversation", "message")
# Scan nodes that read a table through an index (a bitmap heap scan is fed by an index scan).
INDEX_SCANS = ("Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def scan_nodes(plan: dict[str, Any]) -> list[str]:
    """Each scan of an owned table in plan, as "<node> using <index> on <table>"."""
    found = []
    for node in _nodes(plan):
        table = node.get("Relation Name")
        if table in OWNED_TABLES and "Scan" in node["Node Type"]:
            index = node.get("Index Name")
            using = f" using {index}" if index else ""
            found.append(f"{node['Node Type']}{using} on {table}")
    return found


def index_scans_only(nodes: list[str]) -> bool:
    """Whether nodes is not empty and every scan in it goes through an index."""
    return bool(nodes) and all(node.startswith(INDEX_SCANS) for node in nodes)


def _explained(
    session_cm: AbstractContextManager[Session], pattern: Pattern, subject: Subject, options: str
) -> list[dict[str, Any]]:
    """Run pattern once in the session (rolled back); EXPLAIN (options) of every statement."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    with session_cm as session:
        connection: Connection = session.connection()
        event.listen(connection, "before_cursor_execute", capture)
        try:
            pattern.run(session, subject)
        finally:
            event.remove(connection, "before_cursor_execute", capture)
        plans = []
        # Same connection, same transaction: the same role and app.user_id as the pattern had.
        for statement, parameters in statements:
            result = connection.exec_driver_sql(f"explain ({options}) {statement}", parameters)
            plans.append(result.scalar_one()[0]["Plan"])
        session.rollback()
    return plans


def plan_of(
    session_cm: AbstractContextManager[Session], pattern: Pattern, subject: Subject
) -> list[str]:
    """The scan nodes of every statement pattern sends, as it runs in the session."""
    return [
        node
        for plan in _explained(session_cm, pattern, subject, "format json")
        for node in scan_nodes(plan)
    ]


# Where a plan node can hold the verifier's call, and what the report calls it.
_PLACES = {
    "Index Cond": "index condition",
    "Recheck Cond": "recheck condition",
    "Filter": "filter (per row)",
    "One-Time Filter": "one-time filter",
    "Join Filter": "join filter (per row)",
}


def verifier_placement(plan: dict[str, Any]) -> list[str]:
    """Where plan (EXPLAIN VERBOSE) calls todo_rls.current_user_id(): an InitPlan (once per
    statement), an index condition (once per scan), a filter (once per row), ..."""
    found = []
    for node in _nodes(plan):
        if node.get("Parent Relationship") == "InitPlan" and any(
            "current_user_id()" in output for output in node.get("Output", [])
        ):
            found.append("InitPlan (once per statement)")
        for key, place in _PLACES.items():
            if "current_user_id()" in str(node.get(key, "")):
                found.append(f"{place} of {node['Node Type']}")
    return found


def verifier_at(
    session_cm: AbstractContextManager[Session], pattern: Pattern, subject: Subject
) -> list[str]:
    """verifier_placement of every statement pattern sends, duplicates dropped."""
    plans = _explained(session_cm, pattern, subject, "verbose, format json")
    return list(dict.fromkeys(place for plan in plans for place in verifier_placement(plan)))
