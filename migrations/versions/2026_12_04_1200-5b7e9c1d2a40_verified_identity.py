"""Verified identity: policies trust only a user id the database verified, not a bare setting.

Until this revision every policy compared user_id with current_setting('app.user_id'), which the
application role can set to anyone's id: one SQL injection in the app could act as any user. Now
the app signs each transaction's context (HMAC-SHA256 over the user id, a key id and an expiry,
with a key from its environment) and every policy compares user_id with
todo_rls.current_user_id(), a SECURITY DEFINER function that checks the signature against keys
in a table the app role cannot read (ADR 0008).

Objects, all in schema todo_rls:
- role todo_rls_verifier (NOLOGIN): owns the verifier; it may read the keys, nothing else;
- table signing_key: HMAC keys as their inner and outer pads (installed by `todo-rls keys add`);
- signing_key_ring(): the keys as one value, IMMUTABLE on purpose so that the verifier's cached
  plans hold it as a constant (no table read per statement); refresh_signing_keys() rewrites
  the verifier's catalog row, which makes each backend recompile it (a trigger on signing_key
  calls it on every change);
- current_user_id(): the verifier; NULL without a context, an error (SQLSTATE 28000) for a
  forged, expired, retired or unknown-key context;
- begin_scope(): what the session wrapper runs at the start of every transaction, in the batch
  that carries BEGIN: RESET ALL (nothing a previous client left at session level survives),
  then role, search_path, row_security and the context, transaction-locally.

Frozen history: this revision carries its own SQL. sql/ holds the current readable form.

Revision ID: 5b7e9c1d2a40
Revises: 02e680687f90
Create Date: 2026-12-04 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b7e9c1d2a40"
down_revision: str | None = "02e680687f90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED_TABLES = ("task", "conversation", "message", "user_preference")
COMMANDS = ("select", "insert", "update", "delete")
# The predicates before and after this revision (the sub-select makes each an InitPlan: the
# function runs once per statement, whatever the plan).
SETTING_MATCHES = "user_id = (select nullif(pg_catalog.current_setting('app.user_id', true), ''))"
VERIFIED_MATCHES = "user_id = (select todo_rls.current_user_id())"

CREATE_VERIFIER_ROLE = """
do $$
begin
  create role todo_rls_verifier nologin noinherit nosuperuser nobypassrls nocreatedb
    nocreaterole noreplication;
  comment on role todo_rls_verifier is 'todo-rls verifier role (created by todo-rls)';
exception
  when duplicate_object or unique_violation then
    raise notice 'role todo_rls_verifier already exists; keeping it';
end
$$;

do $$
begin
  if exists (
    select from pg_catalog.pg_roles
    where rolname = 'todo_rls_verifier' and (rolsuper or rolbypassrls or rolcanlogin)
  ) then
    raise exception 'role todo_rls_verifier can log in or bypasses row-level security'
      using hint = 'An administrator must run: alter role todo_rls_verifier nologin '
                   'nosuperuser nobypassrls';
  end if;
  if pg_catalog.pg_has_role('todo_app', 'todo_rls_verifier', 'MEMBER') then
    raise exception 'role todo_app is a member of todo_rls_verifier, so it could read the '
                    'signing keys'
      using hint = 'An administrator must revoke that membership first.';
  end if;
end
$$;

-- The migrating role must be a member to make todo_rls_verifier the owner of the functions
-- below (a superuser needs no membership). On PostgreSQL 16+ a CREATEROLE role may grant only
-- a role it has ADMIN OPTION on, which it gets for the roles it creates: a todo_rls_verifier
-- that another role made (another database's migration, as another owner) needs an admin.
do $$
begin
  if not pg_catalog.pg_has_role(current_user, 'todo_rls_verifier', 'MEMBER') then
    execute pg_catalog.format('grant todo_rls_verifier to %I', current_user);
  end if;
exception
  when insufficient_privilege then
    raise exception 'role % may not make itself a member of role todo_rls_verifier, which '
                    'another role created', current_user
      using hint = pg_catalog.format('An administrator (or the role that created '
                                     'todo_rls_verifier) runs: grant todo_rls_verifier to %I; '
                                     'then migrate again.', current_user);
end
$$;
"""

CREATE_SCHEMA_AND_KEYS = r"""
create schema todo_rls;
-- Every role may call begin_scope (todo_rls's engines run it in every transaction, whoever logs
-- in); nothing else here is granted to PUBLIC.
grant usage on schema todo_rls to public;
-- ALTER FUNCTION ... OWNER requires the new owner to hold CREATE on the schema (a superuser
-- skips the check, a database owner does not); revoked again once the functions are its own.
grant create on schema todo_rls to todo_rls_verifier;

-- HMAC-SHA256 keys, stored as the two padded blocks HMAC hashes with (key xor 0x36..,
-- key xor 0x5c..), from which the key follows at once: as secret as the key itself.
-- key_id is derived from the key by the app and by `todo-rls keys add` alike.
create table todo_rls.signing_key (
  key_id text not null,
  inner_pad bytea not null,
  outer_pad bytea not null,
  created_at timestamptz not null default now(),
  retire_at timestamptz,
  constraint pk_signing_key primary key (key_id),
  constraint ck_signing_key_key_id_format check (key_id ~ '^[0-9a-f]{16}$'),
  constraint ck_signing_key_pads_are_blocks
    check (octet_length(inner_pad) = 64 and octet_length(outer_pad) = 64)
);
revoke all on table todo_rls.signing_key from public;
grant select on table todo_rls.signing_key to todo_rls_verifier;

create type todo_rls.signing_key_ring as (
  key_ids text[],
  inner_pads bytea[],
  outer_pads bytea[],
  retire_ats timestamptz[]
);
"""

# IMMUTABLE although it reads a table: the planner folds it into the verifier's cached plans, so
# verifying costs no table read per statement. Only todo_rls_verifier may execute it (a role
# that could would see the keys in its own EXPLAIN output). refresh_signing_keys() makes every
# backend recompile the verifier, which folds the ring again; a trigger calls it on every
# change to the keys.
CREATE_KEY_RING_FUNCTION = """
create function todo_rls.signing_key_ring() returns todo_rls.signing_key_ring
  language sql immutable
begin atomic
  select pg_catalog.array_agg(k.key_id order by k.key_id),
         pg_catalog.array_agg(k.inner_pad order by k.key_id),
         pg_catalog.array_agg(k.outer_pad order by k.key_id),
         pg_catalog.array_agg(k.retire_at order by k.key_id)
    from todo_rls.signing_key k;
end;
revoke all on function todo_rls.signing_key_ring() from public;
alter function todo_rls.signing_key_ring() owner to todo_rls_verifier;
"""

# The context is app.user_id plus app.user_sig = 'v1.<key id:16 hex>.<expiry:10 digits>.<mac>',
# mac = hex(HMAC-SHA256(key, 'v1.<key id>.<expiry>.' || user_id)), HMAC computed from the
# stored pads with the built-in sha256() (no extension needed). Only a refused context pays
# for finding out why.
CREATE_VERIFIER = r"""
create function todo_rls.current_user_id() returns text
  language plpgsql stable security definer
  -- pg_temp last: nothing the caller creates can stand in for what this body names. No plan
  -- of this function is ever printed: its cached plans hold the key ring as a constant.
  set search_path = pg_catalog, pg_temp
  set debug_print_plan = off
as $$
#variable_conflict error
declare
  claimed text := pg_catalog.current_setting('app.user_id', true);
  signature text := pg_catalog.current_setting('app.user_sig', true);
  ring todo_rls.signing_key_ring;
  slot integer;
begin
  if claimed is null or claimed = '' then
    return null;  -- no context: equal to no user_id, so no row matches
  end if;
  if pg_catalog.current_setting('transaction_isolation') = 'read committed' then
    -- A constant in this function's cached plan, folded in a statement that began after the
    -- last change to the keys (which made this function recompile).
    ring := todo_rls.signing_key_ring();
  else
    -- The transaction's snapshot may predate the last change: read the keys, cache nothing.
    select pg_catalog.array_agg(k.key_id order by k.key_id),
           pg_catalog.array_agg(k.inner_pad order by k.key_id),
           pg_catalog.array_agg(k.outer_pad order by k.key_id),
           pg_catalog.array_agg(k.retire_at order by k.key_id)
      into ring.key_ids, ring.inner_pads, ring.outer_pads, ring.retire_ats
      from todo_rls.signing_key k;
  end if;
  slot := pg_catalog.array_position(ring.key_ids, pg_catalog.substr(signature, 4, 16));
  -- An unknown key (slot null) compares as not equal; both sides are 64 hex digits.
  if pg_catalog.left(signature, 3) = 'v1.'
     and pg_catalog.encode(pg_catalog.sha256(ring.outer_pads[slot]
           || pg_catalog.sha256(ring.inner_pads[slot]
                                || pg_catalog.convert_to(pg_catalog.left(signature, 31)
                                                         || claimed, 'UTF8'))), 'hex')
         = pg_catalog.substr(signature, 32)
  then
    -- Signed by us, so the expiry is ten digits. now() is the transaction's start: a context
    -- valid when its transaction began stays valid to the end of it.
    if pg_catalog.substr(signature, 21, 10)::bigint > extract(epoch from pg_catalog.now())
       and not coalesce(ring.retire_ats[slot] <= pg_catalog.now(), false)
    then
      return claimed;
    end if;
    if ring.retire_ats[slot] <= pg_catalog.now() then
      raise exception 'todo_rls: the context is signed with key %, retired at %',
                      ring.key_ids[slot], ring.retire_ats[slot]
        using errcode = 'invalid_authorization_specification',
              hint = 'Deploy the app with a current key (todo-rls keys list).';
    end if;
    raise exception 'todo_rls: the context expired at % (its transaction began at %)',
                    pg_catalog.to_timestamp(pg_catalog.substr(signature, 21, 10)::bigint),
                    pg_catalog.now()
      using errcode = 'invalid_authorization_specification',
            hint = 'A context is signed for each transaction and valid for '
                   'TODO_RLS_CONTEXT_TTL seconds; check that the app''s and the database''s '
                   'clocks agree.';
  end if;

  -- Refused. Say why, without echoing the signature or any key material.
  if coalesce(pg_catalog.cardinality(ring.key_ids), 0) = 0 then
    raise exception 'todo_rls: no signing key is installed in this database'
      using errcode = 'invalid_authorization_specification',
            hint = 'An administrator runs: TODO_RLS_SIGNING_KEY=<the app''s key> '
                   'todo-rls keys add --url <owner URL>';
  end if;
  if signature is null or signature = '' then
    raise exception 'todo_rls: app.user_id is set but app.user_sig is not'
      using errcode = 'invalid_authorization_specification',
            hint = 'Open sessions with todo_rls.scoped_session(); app.user_id alone proves '
                   'nothing.';
  end if;
  if signature !~ '^v1\.[0-9a-f]{16}\.[0-9]{10}\.[0-9a-f]{64}$' then
    raise exception 'todo_rls: app.user_sig is not a todo-rls context signature'
      using errcode = 'invalid_authorization_specification',
            hint = 'Open sessions with todo_rls.scoped_session(); it signs the context.';
  end if;
  if slot is null then
    raise exception 'todo_rls: the context is signed with key %, which is not installed',
                    pg_catalog.substr(signature, 4, 16)
      using errcode = 'invalid_authorization_specification',
            hint = 'Install the app''s key with todo-rls keys add, or check that '
                   'TODO_RLS_SIGNING_KEY is a key installed here (todo-rls keys list).';
  end if;
  raise exception 'todo_rls: the context''s signature does not match app.user_id'
    using errcode = 'invalid_authorization_specification',
          hint = 'The context was changed after it was signed; only '
                 'todo_rls.scoped_session() may set it.';
end
$$;
revoke all on function todo_rls.current_user_id() from public;
alter function todo_rls.current_user_id() owner to todo_rls_verifier;
grant execute on function todo_rls.current_user_id() to todo_app;
"""

# Both run as the verifier's owner, which may rewrite the verifier's catalog row.
CREATE_REFRESH = """
create function todo_rls.refresh_signing_keys() returns void
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  -- A no-op ALTER writes a new catalog row; PL/pgSQL sees its new xmin at the next call in
  -- every backend and recompiles, dropping the plans that hold the old key ring.
  alter function todo_rls.current_user_id() stable;
end
$$;
revoke all on function todo_rls.refresh_signing_keys() from public;
alter function todo_rls.refresh_signing_keys() owner to todo_rls_verifier;

create function todo_rls.signing_key_changed() returns trigger
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform todo_rls.refresh_signing_keys();
  return null;
end
$$;
revoke all on function todo_rls.signing_key_changed() from public;
alter function todo_rls.signing_key_changed() owner to todo_rls_verifier;
create trigger signing_key_changed
  after insert or update or delete or truncate on todo_rls.signing_key
  for each statement execute function todo_rls.signing_key_changed();
"""

# Invoker's rights, so PUBLIC may run it: it does only what the caller could do with SET
# itself. RESET ALL first, so no session-level setting another client left on a pooled connection
# (a context, row_security, statement_timeout, ...) reaches this transaction; then everything
# that decides what a query reaches, for this transaction only. With refuse_sql_prepared (the
# driver prepares statements server-side), a statement prepared by SQL's PREPARE fails the
# transaction: the driver's own
# are prepared through the protocol, and one replaced by SQL (DEALLOCATE, then PREPARE under
# the same name) would run that SQL in this user's transaction.
CREATE_BEGIN_SCOPE = """
create function todo_rls.begin_scope(
  scope_user_id text, scope_signature text, scope_search_path text, scope_role text,
  refuse_sql_prepared boolean
) returns text
  language plpgsql volatile
as $$
begin
  reset all;
  perform pg_catalog.set_config('role', coalesce(scope_role, 'none'), true);
  perform pg_catalog.set_config('search_path', scope_search_path, true);
  perform pg_catalog.set_config('row_security', 'on', true);
  perform pg_catalog.set_config('app.user_id', coalesce(scope_user_id, ''), true);
  perform pg_catalog.set_config('app.user_sig', coalesce(scope_signature, ''), true);
  if refuse_sql_prepared
     and exists (select from pg_catalog.pg_prepared_statements p where p.from_sql) then
    raise exception 'todo_rls: this connection holds statements prepared with SQL'
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Discard the connection; nothing the app runs should call PREPARE.';
  end if;
  return current_user;
end
$$;
grant execute on function todo_rls.begin_scope(text, text, text, text, boolean) to public;
"""

DROP_VERIFIER_ROLE_IF_OURS = """
do $$
begin
  if exists (
    select from pg_catalog.pg_roles r
    where r.rolname = 'todo_rls_verifier'
      and pg_catalog.shobj_description(r.oid, 'pg_authid')
          = 'todo-rls verifier role (created by todo-rls)'
  ) then
    begin
      -- Memberships (the migrating role's among them) go with the role.
      drop role todo_rls_verifier;
    exception
      when dependent_objects_still_exist then
        raise notice 'keeping role todo_rls_verifier: other databases still use it';
      when insufficient_privilege then  -- PostgreSQL 16+: another role created it
        raise notice 'keeping role todo_rls_verifier: % may not drop it', current_user;
    end;
  else
    raise notice 'keeping role todo_rls_verifier: it predates todo-rls';
  end if;
end
$$;
"""


def _replace_policies(predicate: str) -> None:
    quote = op.get_context().dialect.identifier_preparer.quote
    for table in OWNED_TABLES:
        clauses = {
            "select": f"using ({predicate})",
            "insert": f"with check ({predicate})",
            "update": f"using ({predicate}) with check ({predicate})",
            "delete": f"using ({predicate})",
        }
        for command in COMMANDS:
            policy = quote(f"{table}_{command}")
            op.execute(f"drop policy {policy} on public.{quote(table)}")
            op.execute(
                f"create policy {policy} on public.{quote(table)} for {command} to todo_app"
                f" {clauses[command]}"
            )


def upgrade() -> None:
    op.execute(CREATE_VERIFIER_ROLE)
    op.execute(CREATE_SCHEMA_AND_KEYS)
    op.execute(CREATE_KEY_RING_FUNCTION)
    op.execute(CREATE_VERIFIER)
    op.execute(CREATE_REFRESH)
    op.execute(CREATE_BEGIN_SCOPE)
    op.execute("revoke create on schema todo_rls from todo_rls_verifier")
    _replace_policies(VERIFIED_MATCHES)


def downgrade() -> None:
    _replace_policies(SETTING_MATCHES)
    op.execute("drop schema todo_rls cascade")
    op.execute(DROP_VERIFIER_ROLE_IF_OURS)
