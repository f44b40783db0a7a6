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


def plan_of(
    session_cm: AbstractContextManager[Session], pattern: Pattern, subject: Subject
) -> list[str]:
    """Run pattern once in the session (rolled back) and EXPLAIN every statement it sent."""
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
        nodes = []
        # Same connection, same transaction: the same role and app.user_id as the pattern had.
        for statement, parameters in statements:
            result = connection.exec_driver_sql(f"explain (format json) {statement}", parameters)
            nodes += scan_nodes(result.scalar_one()[0]["Plan"])
        session.rollback()
    return nodes
