"""The users a bench run acts for, and the ids and cursors each pattern needs for them."""

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from todo_rls.pagination import MAX_PAGE_SIZE, encode_cursor

SUBJECTS = 20
# Enough tasks for a deep page well past the first (the default page is 20 rows).
_MIN_TASKS = 4 * 20 + 1

# Users spread evenly over the ranking by task count, heaviest first, so both the users with
# tens of thousands of tasks and the typical ones are measured.
_PICK_USERS = """
with counts as (
  select user_id, count(*) as n from public.task group by user_id having count(*) >= %(min)s
), ranked as (
  select user_id, n, row_number() over (order by n desc, user_id) as r, count(*) over () as total
  from counts
)
select user_id, n from ranked
where (r - 1) %% greatest(total / %(k)s, 1) = 0 order by r limit %(k)s
"""
_TASK_AT = """
select id, created_at from public.task where user_id = %s
order by created_at desc, id desc offset %s limit 1
"""
_BUSIEST_CONVERSATION = """
select conversation_id from public.message where user_id = %s
group by conversation_id order by count(*) desc, conversation_id limit 1
"""


@dataclass(frozen=True)
class Subject:
    """One user and the rows the patterns read and write for them."""

    user_id: str
    tasks: int
    task_id: uuid.UUID
    # The cursor of a page three quarters down the user's list (keyset: as cheap as page 1).
    deep_cursor: str
    conversation_id: uuid.UUID


def pick_subjects(conn: psycopg.Connection[Any], count: int = SUBJECTS) -> list[Subject]:
    """Up to count users with enough tasks and a conversation with messages (admin conn)."""
    subjects = []
    users = conn.execute(_PICK_USERS, {"min": _MIN_TASKS, "k": count}).fetchall()
    for user_id, tasks in users:
        task = conn.execute(_TASK_AT, (user_id, tasks // 2)).fetchone()
        deep = conn.execute(_TASK_AT, (user_id, min(tasks * 3 // 4, 100 * MAX_PAGE_SIZE)))
        deep_row = deep.fetchone()
        conversation = conn.execute(_BUSIEST_CONVERSATION, (user_id,)).fetchone()
        if task is None or deep_row is None or conversation is None:
            continue
        cursor = encode_cursor("task", deep_row[1], deep_row[0])
        subjects.append(Subject(user_id, tasks, task[0], cursor, conversation[0]))
    if not subjects:
        raise ValueError(f"no user has {_MIN_TASKS} tasks and a conversation with messages")
    return subjects
