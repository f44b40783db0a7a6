"""The isolation probes can fail: weaken one rule on a scratch copy and they report the leak.

Each case breaks the migrated schema in one way a careless migration could, then runs every
probe for every actor; the probes named by the case must report a leak. If a probe stayed
silent here, the green run of test_policies.py would prove nothing about that rule.
"""

from typing import Any

import psycopg
import pytest

from fix_db import AppConnector
from isolation import ACTORS, PROBES, World, build_world

WEAKENINGS: dict[str, tuple[str, set[str]]] = {
    "select policy always true": (
        "alter policy task_select on task using (true)",
        {"task-select_by_id", "task-select_all", "task-copy_to"},
    ),
    # Dropping WITH CHECK alone weakens nothing: PostgreSQL then checks new rows with USING.
    "update policy that checks nothing": (
        "alter policy task_update on task with check (true)",
        {"task-re-own_rows_to_alice"},
    ),
    "insert policy always true": (
        "alter policy message_insert on message with check (true)",
        {"message-insert_claiming_alice"},
    ),
    "delete policy always true": (
        # Delete by id still finds nothing: its WHERE needs the (intact) SELECT policy.
        "alter policy conversation_delete on conversation using (true)",
        {"conversation-delete_without_where"},
    ),
    "fail-open when app.user_id is unset": (
        "alter policy task_select on task using (user_id = coalesce("
        "nullif(pg_catalog.current_setting('app.user_id', true), ''), user_id))",
        {"task-select_by_id", "task-select_all"},
    ),
    "row level security disabled": (
        "alter table message disable row level security",
        {"message-select_all", "message-update_without_where", "message-delete_by_id"},
    ),
    "extra permissive policy for public": (
        "create policy task_debug on task for select using (true)",
        {"task-select_all", "task-copy_to"},
    ),
    "preference select policy always true": (
        "alter policy user_preference_select on user_preference using (true)",
        {"user_preference-select_by_id", "user_preference-select_all"},
    ),
    "preference insert policy always true": (
        "alter policy user_preference_insert on user_preference with check (true)",
        {"user_preference-insert_claiming_carol"},
    ),
    "preference update policy that checks nothing": (
        "alter policy user_preference_update on user_preference with check (true)",
        {"user_preference-re-own_rows_to_carol"},
    ),
    "preference row level security disabled": (
        "alter table user_preference disable row level security",
        {"user_preference-select_all", "user_preference-delete_without_where"},
    ),
    "message foreign key without user_id": (
        "alter table message drop constraint fk_message_conversation_id_user_id_conversation;"
        " alter table message add constraint fk_message_conversation_id_conversation"
        " foreign key (conversation_id) references conversation (id) on delete cascade",
        {"message-insert_into_alice's_conversation"},
    ),
}


@pytest.mark.parametrize("weakening", WEAKENINGS)
def test_probes_report_a_weakened_policy(
    weakening: str, admin: psycopg.Connection[Any], connect_app: AppConnector
) -> None:
    world: World = build_world(admin)
    statement, must_leak = WEAKENINGS[weakening]
    admin.execute(statement)

    leaking = set()
    for probe in PROBES:
        for actor in ACTORS:
            try:
                if probe.leaks(connect_app, world, actor) is not None:
                    leaking.add(probe.id)
            except AssertionError:
                pass  # a weakened schema may also break an owner's control; not what we test
    connect_app.close_all()

    assert must_leak <= leaking, f"probes stayed silent: {sorted(must_leak - leaking)}"
