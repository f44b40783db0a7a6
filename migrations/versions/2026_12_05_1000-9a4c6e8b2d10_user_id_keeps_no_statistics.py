"""user_id keeps no planner statistics: EXPLAIN cannot name other users' ids (ADR 0011).

EXPLAIN's row estimates come from pg_statistic whatever the policies say. With statistics on
user_id, the app role (or SQL injected into it) recovered the most common user ids by bisecting
`explain select 1 from task where user_id < $1`. Each owned table's user_id now has statistics
target 0, so ANALYZE keeps nothing for it.

ANALYZE does not remove what it kept before the target was 0 (measured on PostgreSQL 15). The
owner's way to remove it, without a superuser, is to retype the column to its own type and
collation: PostgreSQL then drops the column's statistics, without rewriting the table or its
indexes. PostgreSQL refuses that while a policy uses the column, so each table's policies are
re-created exactly as they were, in the same transaction. On Citus, which refuses both on a
distributed table, eb55c0c808a9 sets the target to 0 before it distributes the tables, and
Citus copies it into every shard it creates (ADR 0011).

Downgrade: the statistics target back to the default (-1); the next ANALYZE fills it again.

Revision ID: 9a4c6e8b2d10
Revises: eb55c0c808a9
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9a4c6e8b2d10"
down_revision: str | None = "eb55c0c808a9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """\
-- user_id keeps no planner statistics: EXPLAIN cannot name other users' ids (ADR 0011).
do $$
declare
  t regclass;
  p record;
  recreate text[];
  statement text;
  distributed boolean;
begin
  foreach t in array array['public.task', 'public.conversation', 'public.message',
                           'public.user_preference', 'public.audit_event']::regclass[] loop
    distributed := false;
    if exists (select from pg_catalog.pg_extension where extname = 'citus') then
      execute 'select exists (select from pg_catalog.pg_dist_partition where logicalrelid = $1)'
        into distributed using t;
    end if;
    -- Citus refuses both the target and the retype on a distributed table; eb55c0c808a9 set
    -- the target to 0 before it distributed the table, so its shards gather none.
    continue when distributed;
    execute pg_catalog.format('alter table %s alter column user_id set statistics 0', t);
    -- ANALYZE keeps what it has for a column whose target became 0; retyping the column to its
    -- own type and collation removes it (no rewrite, the indexes are kept). A policy that uses
    -- the column blocks the retype: each is re-created from its own catalog definition.
    recreate := '{}';
    for p in
      select pol.polname, pol.polpermissive, pol.polcmd, pol.polroles,
             pg_catalog.pg_get_expr(pol.polqual, pol.polrelid) as qual,
             pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid) as with_check
      from pg_catalog.pg_policy pol where pol.polrelid = t order by pol.polname
    loop
      recreate := recreate || pg_catalog.format(
        'create policy %I on %s as %s for %s to %s%s%s', p.polname, t,
        case when p.polpermissive then 'permissive' else 'restrictive' end,
        case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update'
                      when 'd' then 'delete' else 'all' end,
        (select pg_catalog.string_agg(
                  case when r = 0 then 'public'
                       else pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r)) end, ', ')
         from pg_catalog.unnest(p.polroles) as r),
        coalesce(' using (' || p.qual || ')', ''),
        coalesce(' with check (' || p.with_check || ')', ''));
      execute pg_catalog.format('drop policy %I on %s', p.polname, t);
    end loop;
    execute (
      select pg_catalog.format('alter table %s alter column user_id type text collate %I.%I', t,
                               n.nspname, c.collname)
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_collation c on c.oid = a.attcollation
      join pg_catalog.pg_namespace n on n.oid = c.collnamespace
      where a.attrelid = t and a.attname = 'user_id');
    foreach statement in array recreate loop
      execute statement;
    end loop;
  end loop;
end
$$;
"""

DOWNGRADE = """\
do $$
declare
  t regclass;
  distributed boolean;
begin
  foreach t in array array['public.task', 'public.conversation', 'public.message',
                           'public.user_preference', 'public.audit_event']::regclass[] loop
    -- A distributed table keeps the target eb55c0c808a9 gave it (its downgrade restores it).
    distributed := false;
    if exists (select from pg_catalog.pg_extension where extname = 'citus') then
      execute 'select exists (select from pg_catalog.pg_dist_partition where logicalrelid = $1)'
        into distributed using t;
    end if;
    continue when distributed;
    execute pg_catalog.format('alter table %s alter column user_id set statistics -1', t);
  end loop;
end
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
