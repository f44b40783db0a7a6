"""user_preference: one row of settings per user, protected by one enable_owner_rls call.

Frozen history: the table's SQL is inline; the protection comes from
todo_rls.owner_rls.enable_owner_rls, whose emitted SQL is pinned by tests/test_rls_guard.py.

Revision ID: 02e680687f90
Revises: 3f9c2a7d1b04
Create Date: 2026-12-01 17:00:00
"""

from collections.abc import Sequence

from alembic import op

from todo_rls.owner_rls import disable_owner_rls, enable_owner_rls

revision: str = "02e680687f90"
down_revision: str | None = "3f9c2a7d1b04"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# user_id is the primary key: the key itself makes "one row per user" true, an upsert has a
# natural conflict target, and there is no second id to look rows up by.
CREATE_TABLE = r"""
create table public.user_preference (
  user_id text not null,
  theme text not null default 'system',
  language text not null default 'en',
  notify_email boolean not null default true,
  notify_push boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pk_user_preference primary key (user_id),
  constraint fk_user_preference_user_id_user
    foreign key (user_id) references public."user" (id) on delete cascade,
  constraint ck_user_preference_theme_known check (theme in ('system', 'light', 'dark')),
  constraint ck_user_preference_language_tag check (language ~ '^[a-z]{2,3}(-[A-Z]{2})?$')
);
-- No query filters on these; without statistics EXPLAIN cannot estimate how common a choice is.
alter table public.user_preference alter column theme set statistics 0,
  alter column language set statistics 0;
"""


def upgrade() -> None:
    op.execute(CREATE_TABLE)
    enable_owner_rls(op, "user_preference")


def downgrade() -> None:
    disable_owner_rls(op, "user_preference")
    op.execute("drop table public.user_preference")
