"""The report of `todo-rls check`: readable text grouped by object, or one JSON object."""

import json
from dataclasses import asdict
from itertools import groupby
from typing import Any

from todo_rls.check.context import Context
from todo_rls.check.findings import Finding
from todo_rls.check.rules import RULES


def summary(ctx: Context, findings: list[Finding]) -> dict[str, Any]:
    """Counts for the report's last line and the JSON's summary."""
    return {
        "findings": len(findings),
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
        "rules": len(RULES),
        "tables": [table.name for table in ctx.tables],
        "schema": ctx.schema,
        "app_role": ctx.app_role.name,
        "login_roles": [role.name for role in ctx.login_roles],
    }


def as_json(database: str, ctx: Context, findings: list[Finding]) -> str:
    """`{"database": ..., "findings": [...], "summary": {...}}` as one JSON object."""
    return json.dumps(
        {
            "database": database,
            "findings": [asdict(f) for f in findings],
            "summary": summary(ctx, findings),
        },
        indent=2,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def as_text(database: str, ctx: Context, findings: list[Finding]) -> str:
    """A readable report: one block per table (or role, function, view), then the counts."""
    counts = summary(ctx, findings)
    lines = [
        f"todo-rls check: database {database!r}, schema {ctx.schema}, app role "
        f"{ctx.app_role.name}, login roles: {', '.join(counts['login_roles']) or 'none'}"
    ]
    for name, group in groupby(sorted(findings, key=lambda f: f.object), key=lambda f: f.object):
        lines.append(f"\n{name}")
        for f in group:
            lines.append(f"  {f.severity.upper():7} {f.rule:7} {f.message}")
            lines.append(f"  {'':7} {'fix:':7} {f.fix}")
    scope = f"{_count(counts['rules'], 'rule')} over {_count(len(ctx.tables), 'table')}"
    if findings:
        lines.append(
            f"\n{_count(counts['findings'], 'finding')} ({_count(counts['errors'], 'error')}, "
            f"{_count(counts['warnings'], 'warning')}); {scope}"
        )
    else:
        lines.append(f"no findings; {scope}")
    return "\n".join(lines)
