"""The isolation matrix can fail: weaken one rule on a scratch copy and it reports the leak.

Each case breaks the migrated schema in one way a careless migration could, then runs the
plugin's matrix (todo_rls.testing.find_leaks, as tests/test_policies.py does) on the table it
broke; the commands named by the case must leak. If one stayed silent here, the green run of
test_policies.py would prove nothing about that rule.
"""

from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.testing import find_leaks

from fix_db import SIGNING_KEY
from test_policies import ROWS

# Every probe for every actor, per weakening; the matrix itself runs in the fast tier.
pytestmark = [pytest.mark.slow, pytest.mark.own_database]

# weakening -> (the statement, the table it breaks, commands that must leak there)
WEAKENINGS: dict[str, tuple[str, str, set[str]]] = {
    "select policy always true": (
        "alter policy task_select on task using (true)",
        "task",
        {"select by key", "select all", "copy to"},
    ),
    # Dropping WITH CHECK alone weakens nothing: PostgreSQL then checks new rows with USING.
    "update policy that checks nothing": (
        "alter policy task_update on task with check (true)",
        "task",
        {"re-own to another user"},
    ),
    "insert policy always true": (
        "alter policy message_insert on message with check (true)",
        "message",
        {"insert claiming someone else"},
    ),
    "delete policy always true": (
        # Delete by key still finds nothing: its WHERE needs the (intact) SELECT policy.
        "alter policy conversation_delete on conversation using (true)",
        "conversation",
        {"delete all"},
    ),
    "fail-open when app.user_id is unset": (
        "alter policy task_select on task using (user_id = coalesce("
        "nullif(pg_catalog.current_setting('app.user_id', true), ''), user_id))",
        "task",
        {"select by key", "select all"},
    ),
    "extra permissive policy for public": (
        "create policy task_debug on task for select using (true)",
        "task",
        {"select all", "copy to"},
    ),
    "preference select policy always true": (
        "alter policy user_preference_select on user_preference using (true)",
        "user_preference",
        {"select by key", "select all"},
    ),
    "preference insert policy always true": (
        "alter policy user_preference_insert on user_preference with check (true)",
        "user_preference",
        {"insert claiming someone else"},
    ),
    "preference update policy that checks nothing": (
        "alter policy user_preference_update on user_preference with check (true)",
        "user_preference",
        {"re-own to another user"},
    ),
    "message foreign key without user_id": (
        # conversation's key is (user_id, id): id alone needs a unique constraint to be referenced.
        "alter table conversation add constraint uq_conversation_id unique (id);"
        " alter table message drop constraint fk_message_conversation_id_user_id_conversation;"
        " alter table message add constraint fk_message_conversation_id_conversation"
        " foreign key (conversation_id) references conversation (id) on delete cascade",
        "message",
        {
            "insert pointing at the owner's conversation row"
            " (foreign key fk_message_conversation_id_conversation)"
        },
    ),
}


@pytest.mark.parametrize("weakening", WEAKENINGS)
def test_the_matrix_reports_a_weakened_policy(
    weakening: str, admin: psycopg.Connection[Any], app_url: str
) -> None:
    statement, table, must_leak = WEAKENINGS[weakening]
    admin.execute(statement)
    leaks = find_leaks(admin, app_url, table, ROWS[table](admin), signing_key=SIGNING_KEY)
    leaking = {leak.command for leak in leaks}
    assert must_leak <= leaking, f"the matrix stayed silent: {sorted(must_leak - leaking)}"


@pytest.mark.parametrize("table", ["message", "user_preference"])
@pytest.mark.parametrize("change", ["disable", "no force"])
def test_the_matrix_refuses_a_table_without_forced_row_level_security(
    table: str, change: str, admin: psycopg.Connection[Any], app_url: str
) -> None:
    alter = sql.SQL("alter table {} {} row level security")
    admin.execute(alter.format(sql.Identifier(table), sql.SQL(change)))
    with pytest.raises(AssertionError, match=f"{table}: row level security is not"):
        find_leaks(admin, app_url, table, ROWS[table](admin), signing_key=SIGNING_KEY)
