"""What the data-access layer sends: the role it runs as, its statements and their plans."""

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, func
from sqlmodel import Session, select

from fix_db import APP_LOGIN


def assert_app_role(session: Session) -> None:
    """The session runs as the application login role, with row-level security on."""
    role, rls = session.exec(select(func.current_user(), func.row_security_active("task"))).one()
    assert (role, rls) == (APP_LOGIN, True)


def statements_sent(session: Session, run: Callable[[Session], object]) -> list[tuple[str, Any]]:
    """The (SQL, parameters) of every statement run(session) sends through the engine."""
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:  # conn, cursor, statement, parameters, context, many
        sent.append((args[2], args[3]))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        run(session)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sent, "run sent no statement"
    return sent


def plan_of(session: Session, run: Callable[[Session], object]) -> str:
    """The plan of the last statement run(session) sends, with sequential scans priced out."""
    statement, parameters = statements_sent(session, run)[-1]
    # Tiny test tables make a sequential scan cheapest; the question is which index fits.
    session.exec(select(func.set_config("enable_seqscan", "off", True)))
    rows = session.connection().exec_driver_sql("explain " + statement, parameters).all()
    return "\n".join(row[0] for row in rows)


def assert_filtered_by_user(sent: list[tuple[str, Any]], user: str) -> None:
    """Each statement names user: an INSERT as the owner, any other in WHERE <table>.user_id."""
    for statement, parameters in sent:
        assert user in parameters.values(), statement
        if not statement.startswith("INSERT"):
            where = re.split(r"\sWHERE\s", statement)[-1]
            assert re.search(r"\b(task|conversation|message)\.user_id = %\(", where), statement


def index_condition(plan: str) -> str:
    """The Index Cond line of a one-index plan."""
    (line,) = [line for line in plan.splitlines() if "Index Cond:" in line]
    return line
