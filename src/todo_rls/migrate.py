"""Run todo-rls's Alembic migrations from Python (the CLI, the pytest plugin and the tests)."""

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, create_engine, pool, text
from sqlalchemy.exc import DBAPIError

from todo_rls.engine import database_url
from todo_rls.errors import DatabaseUrlError, MigrationPreconditionError
from todo_rls.models import metadata
from todo_rls.users_table import USERS_TABLE_ENV, UsersTable

# Where the Alembic scripts (env.py, script.py.mako, versions/) are: inside the package when
# installed from a wheel (pyproject.toml maps migrations/ to todo_rls._migrations), at the
# repository root in a checkout or an editable install. The packaged copy wins when both exist.
PACKAGED_MIGRATIONS = Path(__file__).resolve().with_name("_migrations")
CHECKOUT_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

# Where Alembic records which of todo-rls's revisions a database has: a table of our own, so an
# app's own Alembic chain keeps the default alembic_version and the two never collide
# (specs/decisions/0010-own-alembic-version-table.md).
VERSION_TABLE = "todo_rls_alembic_version"
# Where todo-rls 0.1 recorded them (Alembic's default), carried over once by carry_over_versions.
# Both are named without a schema, as Alembic names them: the first schema of the search path.
LEGACY_VERSION_TABLE = "alembic_version"
_VERSION_TABLES = text(
    "select pg_catalog.to_regclass('todo_rls_alembic_version') is not null as ours,"
    " pg_catalog.to_regclass('alembic_version') is not null as legacy"
)
# The table Alembic itself would create (alembic.ddl.impl.DefaultImpl.version_table_impl).
_CREATE_VERSION_TABLE = text(
    "create table todo_rls_alembic_version (version_num varchar(32) not null,"
    " constraint todo_rls_alembic_version_pkc primary key (version_num))"
)


def migrations_dir() -> Path:
    """The directory holding env.py and versions/, packaged or in the checkout."""
    for candidate in (PACKAGED_MIGRATIONS, CHECKOUT_MIGRATIONS):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise MigrationPreconditionError(
        f"todo-rls's migrations are in neither {PACKAGED_MIGRATIONS} nor {CHECKOUT_MIGRATIONS}:"
        " reinstall with pip install --force-reinstall todo-rls"
        " (or pip install -e . in a checkout)"
    )


def carry_over_versions(connection: Connection, our_revisions: set[str]) -> list[str]:
    """Move todo-rls's rows from alembic_version into todo_rls_alembic_version,
    once, inside the caller's transaction; the revisions moved (none if there was nothing to do).

    A database migrated before the version table had its own name records our revision in
    alembic_version; without this, Alembic would see no todo-rls revision and run the first one
    again. Only rows naming one of our revisions move; an app's rows stay, and alembic_version
    is dropped only when nothing else was in it. Nothing runs twice and no schema object is
    touched: only these bookkeeping rows change tables.
    """
    found = connection.execute(_VERSION_TABLES).one()
    if found.ours or not found.legacy:
        return []
    # A concurrent app migration must not add or remove rows while we read and move them.
    connection.execute(text("lock table alembic_version in exclusive mode"))
    rows = list(connection.execute(text("select version_num from alembic_version")).scalars())
    ours = sorted(row for row in rows if row in our_revisions)
    if not ours:
        return []
    connection.execute(_CREATE_VERSION_TABLE)
    connection.execute(
        text(
            "insert into todo_rls_alembic_version (version_num)"
            " select v from unnest(cast(:ours as text[])) v"
        ),
        {"ours": ours},
    )
    connection.execute(
        text("delete from alembic_version where version_num = any(:ours)"), {"ours": ours}
    )
    if len(ours) == len(rows):
        connection.execute(text("drop table alembic_version"))
    return ours


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic config for todo-rls's migrations, optionally bound to a connection.

    Built in code rather than read from alembic.ini, which a wheel does not ship: upgrade and
    downgrade need only these two options (alembic.ini's file_template and timezone only name
    new revision files, which developers create with `alembic revision` in a checkout).
    """
    config = Config()
    # Config values go through configparser interpolation, so a literal % must be doubled.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


# Where migrations take their URL when none is given: the direct (non-pooled) owner URL first,
# so that forgetting --url never migrates as the pooled app role DATABASE_URL usually names;
# and whatever it names, require_owner refuses a connection that is not the schema's owner.
URL_VARIABLES = ("DATABASE_URL_DIRECT", "DATABASE_URL")


@dataclass(frozen=True)
class MigrationUrl:
    """The URL a migration connects with, and where it came from (for messages)."""

    url: URL
    source: str  # "--url", "$DATABASE_URL_DIRECT" or "$DATABASE_URL"


def migration_url(given: str | None = None) -> MigrationUrl:
    """given (--url) if any, else $DATABASE_URL_DIRECT, else $DATABASE_URL; DatabaseUrlError
    naming all three when none is set."""
    if given:
        return MigrationUrl(database_url(given), "--url")
    for variable in URL_VARIABLES:
        value = os.environ.get(variable)
        if value:
            return MigrationUrl(database_url(value), f"${variable}")
    raise DatabaseUrlError(
        "no database URL: pass --url OWNER_URL or export DATABASE_URL_DIRECT (the owner's direct,"
        " non-pooled URL; DATABASE_URL is read last)"
    )


# What the migrating role must own (directly or as a member of the owner): schema public, and
# each object of todo-rls that already exists. A superuser passes every check; so does the
# database owner for public on PostgreSQL 15+, where pg_database_owner owns it.
_OWNERSHIP = text("""
select current_user::text, pg_catalog.format('%s %s', kind, name), owner::regrole::text
from (
  select 'schema' as kind, 'public' as name, n.nspowner as owner
  from pg_catalog.pg_namespace n where n.nspname = 'public'
  union all
  select 'schema', n.nspname::text, n.nspowner
  from pg_catalog.pg_namespace n where n.nspname = 'todo_rls'
  union all
  select 'table', c.oid::regclass::text, c.relowner
  from pg_catalog.pg_class c
  where c.relnamespace = 'public'::regnamespace and c.relname = any(:tables)
  union all
  select 'function', p.oid::regprocedure::text, p.proowner
  from pg_catalog.pg_proc p
  where p.oid = pg_catalog.to_regprocedure('public.todo_rls_set_updated_at()')
) o
where not pg_catalog.pg_has_role(current_user, o.owner, 'MEMBER')
order by 2
""")
_CAN_CREATE_ROLE = text("""
select exists (select from pg_catalog.pg_roles where rolname = 'todo_app')
    or exists (select from pg_catalog.pg_roles where rolname = current_user
               and (rolsuper or rolcreaterole))
""")


class NotTheOwnerError(MigrationPreconditionError):
    """The migrating connection is not the owner of the schema or of todo-rls's objects."""


def require_owner(connection: Connection) -> None:
    """Raise NotTheOwnerError, before anything is written, unless the connection's role owns
    (or is a member of the owner of) schema public and every todo-rls object that exists, and
    can create role todo_app if it is missing."""
    tables = [table.name for table in metadata.sorted_tables if table.name != "user"]
    tables.append(VERSION_TABLE)
    rows = connection.execute(_OWNERSHIP, {"tables": tables}).all()
    problems = [f"{what} (owner {owner})" for _, what, owner in rows]
    if not connection.execute(_CAN_CREATE_ROLE).scalar():
        problems.append("role todo_app is missing and this role may not create roles")
    if not problems:
        return
    who = connection.execute(text("select current_user::text")).scalar()
    # PostgreSQL 14 gives public to the bootstrap superuser; 15 to pg_database_owner.
    before_15 = (connection.dialect.server_version_info or (15,)) < (15,)
    on_14 = (
        " On PostgreSQL 14, where public belongs to the superuser, the superuser can run"
        " alter schema public owner to pg_database_owner (PostgreSQL 15's default) and let the"
        " database owner migrate."
        if before_15 and any(what == "schema public" for _, what, _ in rows)
        else ""
    )
    raise NotTheOwnerError(
        f"connected as {who}, which does not own {'; '.join(problems)}. Nothing was changed."
        " Migrations must run as the owner of the schema and of todo-rls's tables (on Neon,"
        " the role that owns the database, over the direct host without -pooler): pass its URL"
        f" with --url or $DATABASE_URL_DIRECT, not the application's.{on_14}"
    )


# Whether todo_app may create objects in schema public: one DO block, which the migrations run
# after their last revision (require_closed_schema) and the offline script (alembic upgrade
# --sql, sql/) prints before its COMMIT, so a script run with psql checks it the same way. It
# checks only at a revision of ours (the version table has a row): a downgrade to base is never
# refused for it, and the offline one drops the version table. PostgreSQL 14 and older grant
# CREATE there to PUBLIC (pg_upgrade keeps that ACL); the message names the schema's owner, who
# alone can revoke it. No % in it: the offline dialect and psycopg would each treat one.
_OPEN_SCHEMA = "todo_app may create objects in schema public"
CLOSED_SCHEMA_CHECK = f"""\
do $todo_rls_closed_schema$
declare
  at_a_revision boolean := false;
  through_public boolean;
  schema_owner text;
begin
  if pg_catalog.to_regclass('{VERSION_TABLE}') is not null then
    execute 'select exists (select from {VERSION_TABLE})' into at_a_revision;
  end if;
  if not at_a_revision or pg_catalog.to_regrole('todo_app') is null then
    return;
  end if;
  if not pg_catalog.has_schema_privilege('todo_app', 'public', 'CREATE') then
    return;
  end if;
  select exists (select from pg_catalog.aclexplode(n.nspacl) a
                 where a.grantee = 0 and a.privilege_type = 'CREATE'),
         n.nspowner::regrole::text
    into through_public, schema_owner
    from pg_catalog.pg_namespace n
   where n.nspname = 'public';
  raise exception using message = '{_OPEN_SCHEMA}'
    || case when through_public
            then ' (PUBLIC holds CREATE there, the default up to PostgreSQL 14)' else '' end
    || ': with one SQL injection the app could plant a function that runs with an admin''s'
    || ' rights. Run, as ' || schema_owner || ' (the schema''s owner): '
    || case when through_public
            then 'revoke create on schema public from public; (PostgreSQL 15''s default;'
                 || ' grant create on schema public to the roles that need it)'
            else 'revoke create on schema public from todo_app; (and from any role it is a'
                 || ' member of)' end
    || ' then migrate (or run this script) again. Nothing was changed.';
end
$todo_rls_closed_schema$"""  # noqa: S608 (our constants only, no value from a caller)


class OpenSchemaError(MigrationPreconditionError):
    """todo_app may create objects in schema public (PostgreSQL 14's default ACL)."""


def require_closed_schema(connection: Connection) -> None:
    """Raise OpenSchemaError if todo_app may create objects in schema public.

    There it could plant a function or an operator that a better-matching signature makes
    other roles call instead of pg_catalog's (CVE-2018-1058): the migrating role or an admin
    then runs the injector's code with their rights, which no policy binds. PostgreSQL 15+
    grants that to nobody; 14 and older grant it to PUBLIC. Revoking it changes every role of
    the database, so the migration asks rather than doing it. Run it after the migrations, in
    their transaction: the first creates todo_app, and the exception rolls all of them back.
    """
    try:
        connection.execute(text(CLOSED_SCHEMA_CHECK))
    except DBAPIError as error:
        diag = getattr(error.orig, "diag", None)
        message = getattr(diag, "message_primary", None) or ""
        if message.startswith(_OPEN_SCHEMA):
            raise OpenSchemaError(message) from None
        raise


# On Citus the roles belong to the cluster, not to a database: the first time a database's
# objects depend on todo_app or todo_rls_verifier, Citus applies the role again on every worker
# (ALTER ROLE), and two databases migrating at once fail with "tuple concurrently updated"
# (measured: of 5 pairs migrated at once, one of each pair failed). So a migration on Citus
# locks role todo_app until it commits: COMMENT ON ROLE locks the role itself, a shared object,
# so across databases, and writing back the comment the role has changes nothing. On a new
# cluster, where todo_app does not exist yet, it locks the migrating role instead.
_SERIALIZE_ON_CITUS = text("""
do $$
declare
  target record;
begin
  if not exists (select from pg_catalog.pg_extension where extname = 'citus') then
    return;
  end if;
  select r.oid, r.rolname into target
  from pg_catalog.pg_roles r
  where r.rolname in ('todo_app', current_user)
  order by r.rolname = 'todo_app' desc
  limit 1;
  execute 'comment on role ' || pg_catalog.quote_ident(target.rolname) || ' is '
    || coalesce(pg_catalog.quote_literal(pg_catalog.shobj_description(target.oid, 'pg_authid')),
                'null');
end
$$
""")
# A migration waits at most this long for a lock (a lock_timeout), so it never queues behind
# live traffic (and never makes that traffic queue behind it) for long; rerun it when traffic is
# low.
LOCK_TIMEOUT_ENV = "TODO_RLS_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = "5s"
# How long a migration on Citus waits for another database's migration on the same cluster
# first: one takes about 2 s there, so the default lets some thirty queue.
CLUSTER_WAIT_ENV = "TODO_RLS_CLUSTER_WAIT"
DEFAULT_CLUSTER_WAIT = "60s"


def set_lock_timeout(connection: Connection, variable: str, default: str) -> str:
    """Set lock_timeout, for the rest of the transaction, to $variable, else default.

    Returns the value set.

    Raises:
        MigrationPreconditionError: the server takes the value for no duration; nothing was
            changed.
    """
    value = os.environ.get(variable, default)
    try:
        connection.execute(
            text("select pg_catalog.set_config('lock_timeout', :value, true)"), {"value": value}
        )
    except DBAPIError as error:
        if isinstance(error.orig, psycopg.errors.InvalidParameterValue):
            raise MigrationPreconditionError(
                f"{variable}={value!r} is not a duration PostgreSQL takes: set it like 5s, 500ms"
                " or 2min, or unset it. Nothing was changed."
            ) from error
        raise
    return value


def serialize_on_citus(connection: Connection) -> None:
    """On a Citus database, wait (up to $TODO_RLS_CLUSTER_WAIT, default 60s) until no other
    database of the cluster is migrating, and hold them off until this transaction ends; on any
    other server, do nothing. A role that may not comment on role todo_app (no CREATEROLE, or
    no ADMIN OPTION on PostgreSQL 16+) migrates without the lock, with a warning.

    Raises:
        MigrationPreconditionError: the wait ran out, or $TODO_RLS_CLUSTER_WAIT is no duration;
            nothing was changed.
    """
    wait = set_lock_timeout(connection, CLUSTER_WAIT_ENV, DEFAULT_CLUSTER_WAIT)
    try:
        with connection.begin_nested():
            connection.execute(_SERIALIZE_ON_CITUS)
    except DBAPIError as error:
        if isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
            warnings.warn(
                "todo-rls: this role may not lock role todo_app, so migrations of other"
                " databases on this Citus cluster are not held off: migrate one database of a"
                ' cluster at a time (one that fails with "tuple concurrently updated" changed'
                " nothing and can be run again)",
                stacklevel=2,
            )
            return
        if isinstance(error.orig, psycopg.errors.LockNotAvailable):
            raise MigrationPreconditionError(
                f"another database on this Citus cluster was still migrating after {wait}"
                f" (${CLUSTER_WAIT_ENV}); nothing was changed. Run this migration again when"
                f" it has finished, or set {CLUSTER_WAIT_ENV} longer."
            ) from error
        raise


# The table fk_task_user_id_user references, if task exists: the users table an earlier run
# chose, which later revisions must reference too.
_USERS_TABLE_IN_USE = text("""
select n.nspname::text, c.relname::text
from pg_catalog.pg_constraint k
join pg_catalog.pg_class c on c.oid = k.confrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where k.conrelid = pg_catalog.to_regclass('public.task') and k.conname = 'fk_task_user_id_user'
""")


def require_same_users_table(connection: Connection, users: UsersTable) -> None:
    """Raise MigrationPreconditionError if the database's tables already reference a users
    table other than users (TODO_RLS_USERS_TABLE changed, or was forgotten, between runs)."""
    row = connection.execute(_USERS_TABLE_IN_USE).one_or_none()
    if row is None or UsersTable(*row) == users:
        return
    in_use = UsersTable(*row)
    raise MigrationPreconditionError(
        f"this database's tables reference {in_use.sql}, but this run would use {users.sql}: "
        f"set {USERS_TABLE_ENV}={in_use.sql} (it must stay the same for every migration run)."
        " Nothing was changed."
    )


def current_revisions(url: URL) -> list[str]:
    """The todo-rls revisions url's database records (none: at base, or never migrated)."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            if (
                connection.execute(
                    text("select pg_catalog.to_regclass(:t)"), {"t": VERSION_TABLE}
                ).scalar()
                is None
            ):
                return []
            found = connection.execute(text("select version_num from todo_rls_alembic_version"))
            return sorted(found.scalars())
    finally:
        engine.dispose()


def describe_revision(revision: str) -> str:
    """revision and its one-line message, e.g. 02e680687f90 (user_preference: ...)."""
    script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    doc = (script.doc if script is not None else "") or ""
    return f"{revision} ({doc})" if doc else revision


def _run(url: str | None, action: str, revision: str) -> None:
    engine = create_engine(migration_url(url).url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            getattr(command, action)(alembic_config(connection), revision)
            connection.commit()
    except DBAPIError as error:
        # A precondition in a migration raises with a hint that says what to do.
        if isinstance(error.orig, psycopg.errors.RaiseException):
            diag = error.orig.diag
            raise MigrationPreconditionError(
                f"{diag.message_primary}. {diag.message_hint or ''}".strip()
            ) from error
        raise
    finally:
        engine.dispose()


def offline_sql(action: str, revisions: str) -> str:
    """The script `alembic ACTION REVISIONS --sql` prints (action "upgrade" or "downgrade",
    revisions "FROM:TO"): the migrations for psql, in one transaction, with the closed-schema
    check before its COMMIT. Needs no server: env.py takes only the dialect from $DATABASE_URL."""
    config = alembic_config()
    config.output_buffer = script = io.StringIO()
    getattr(command, action)(config, revisions, sql=True)
    return script.getvalue()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply migrations up to revision, all in one transaction (nothing half-applied). url
    defaults to $DATABASE_URL_DIRECT, then $DATABASE_URL; it must be the schema's owner."""
    _run(url, "upgrade", revision)


def downgrade(url: str | None, revision: str) -> None:
    """Revert migrations down to revision (no default: "base" removes everything of
    todo-rls); Better Auth's "user" table is never touched."""
    _run(url, "downgrade", revision)
