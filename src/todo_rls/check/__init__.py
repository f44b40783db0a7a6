"""`todo-rls check`: audit a live database for row-level-security holes (docs/check.md).

connect + audit are the library API; the command is todo_rls.check.command, the rule table
todo_rls.check.rules.
"""

from todo_rls.check.database_audit import audit, connect

__all__ = ["audit", "connect"]
