"""Side channels the schema closes: planner statistics must not echo other users' text.

EXPLAIN's row estimates come from pg_statistic whatever the policies say, so a common value of
a column is visible to any role that may query the table. Free-text columns keep no statistics.
"""

from typing import Any

import psycopg
import pytest
from psycopg import sql

from fix_db import AppConnector, create_user

SECRET = "BOB MEDICAL: chemo appointment"
FREE_TEXT = [("task", "title"), ("task", "description"), ("conversation", "title"),
             ("message", "content")]  # fmt: skip


def estimated_rows(conn: psycopg.Connection[Any], table: str, column: str, value: str) -> int:
    query = sql.SQL("explain (format json) select * from {} where {} = %s").format(
        sql.Identifier(table), sql.Identifier(column)
    )
    row = conn.execute(query, (value,)).fetchone()
    assert row is not None
    return int(row[0][0]["Plan"]["Plan Rows"])


@pytest.fixture
def bob_with_a_common_secret(admin: psycopg.Connection[Any]) -> tuple[str, str]:
    """bob owns many rows carrying SECRET in every free-text column; statistics are fresh."""
    alice, bob = create_user(admin), create_user(admin)
    for _ in range(40):
        conversation = admin.execute(
            "insert into conversation (user_id, title) values (%s, %s) returning id", (bob, SECRET)
        ).fetchone()
        assert conversation is not None
        admin.execute(
            "insert into task (user_id, title, description) values (%s, %s, %s)",
            (bob, SECRET, SECRET),
        )
        admin.execute(
            "insert into message (user_id, conversation_id, role, content)"
            " values (%s, %s, 'user', %s)",
            (bob, conversation[0], SECRET),
        )
    admin.execute("analyze task, conversation, message")
    return alice, bob


def test_row_estimates_do_not_reveal_other_users_text(
    bob_with_a_common_secret: tuple[str, str], connect_app: AppConnector
) -> None:
    alice, bob = bob_with_a_common_secret
    with connect_app() as conn, conn.transaction(force_rollback=True):
        conn.execute("select set_config('app.user_id', %s, true)", (alice,))
        assert conn.execute("select count(*) from task").fetchone() == (0,)
        # Positive control: user_id keeps statistics, and the estimate does tell bob's id apart
        # from an unknown one, so this method would see a leak if one were there.
        assert estimated_rows(conn, "task", "user_id", bob) > 2 * estimated_rows(
            conn, "task", "user_id", "nobody"
        )
        for table, column in FREE_TEXT:
            assert estimated_rows(conn, table, column, SECRET) == estimated_rows(
                conn, table, column, "no such text"
            ), f"{table}.{column} estimates reveal a common value"


def test_free_text_columns_keep_no_statistics(
    bob_with_a_common_secret: tuple[str, str], admin: psycopg.Connection[Any]
) -> None:
    kept = admin.execute(
        """
        select c.relname::text, a.attname::text
        from pg_statistic s
        join pg_class c on c.oid = s.starelid
        join pg_attribute a on a.attrelid = s.starelid and a.attnum = s.staattnum
        where c.relname in ('task', 'conversation', 'message')
        """
    ).fetchall()
    assert ("task", "user_id") in kept  # positive control: ANALYZE did run
    assert not set(FREE_TEXT) & set(kept)
