"""Co-location-ready keys: user_id in every primary key and unique constraint of the owned tables.

Citus enforces a primary key or unique constraint of a distributed table only if it contains
the distribution column, so these keys are what lets the next revision distribute the owned
tables by user_id. On a single node they change no plan of the data-access layer (every DAL
statement filters by user_id and id; EXPLAIN measured in ADR 0005, "Measured facts").

- pk_task, pk_conversation, pk_message: (id) becomes (user_id, id). user_id first, like every
  other index of these tables: one user's keys sit together, the key serves a user_id-only
  lookup (the cascade from "user"), and the order matches the distribution column.
- uq_conversation_id_user_id (id, user_id) is dropped: pk_conversation now holds the same
  columns, and message's composite foreign key targets it instead.
- user_preference already has pk_user_preference (user_id); nothing else is unique.

Revision ID: f442b80e6153
Revises: 7d3f1a9c0b52
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f442b80e6153"
down_revision: str | None = "7d3f1a9c0b52"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The foreign key depends on the unique index it targets, so it is dropped and added again
# around the key changes; its columns and name stay the same.
DROP_MESSAGE_FK = """
alter table public.message drop constraint fk_message_conversation_id_user_id_conversation
"""
ADD_MESSAGE_FK = """
alter table public.message add constraint fk_message_conversation_id_user_id_conversation
  foreign key (conversation_id, user_id)
  references public.conversation (id, user_id) on delete cascade
"""

UPGRADE_KEYS = """
alter table public.conversation drop constraint uq_conversation_id_user_id;
alter table public.task drop constraint pk_task,
  add constraint pk_task primary key (user_id, id);
alter table public.conversation drop constraint pk_conversation,
  add constraint pk_conversation primary key (user_id, id);
alter table public.message drop constraint pk_message,
  add constraint pk_message primary key (user_id, id);
"""

DOWNGRADE_KEYS = """
alter table public.task drop constraint pk_task,
  add constraint pk_task primary key (id);
alter table public.conversation drop constraint pk_conversation,
  add constraint pk_conversation primary key (id),
  add constraint uq_conversation_id_user_id unique (id, user_id);
alter table public.message drop constraint pk_message,
  add constraint pk_message primary key (id);
"""


def upgrade() -> None:
    op.execute(DROP_MESSAGE_FK)
    op.execute(UPGRADE_KEYS)
    op.execute(ADD_MESSAGE_FK)


def downgrade() -> None:
    op.execute(DROP_MESSAGE_FK)
    op.execute(DOWNGRADE_KEYS)
    op.execute(ADD_MESSAGE_FK)
