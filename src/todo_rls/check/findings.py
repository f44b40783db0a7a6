"""What a rule reports: a hit where it looked, and the finding it becomes in the report."""

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Hit:
    """What a rule found: where, what is wrong, and the SQL (or step) that fixes it."""

    object: str
    message: str
    fix: str


@dataclass(frozen=True)
class Finding:
    """A hit with the id and severity of the rule that found it."""

    object: str
    rule: str
    severity: Severity
    message: str
    fix: str
