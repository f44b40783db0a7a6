"""A concurrent isolation workload (todo_rls.stress.workload) and `todo-rls stress` (.command)."""

from todo_rls.stress.plan import StressPlan, StressResult
from todo_rls.stress.workload import run_stress

__all__ = ["StressPlan", "StressResult", "run_stress"]
