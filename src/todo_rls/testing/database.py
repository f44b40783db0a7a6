"""The test server, the migrated template database, its login role and its users."""

import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL, create_engine, pool

from todo_rls import migrate
from todo_rls.demo import BETTER_AUTH_USER_DDL
from todo_rls.errors import UnsafeRoleError
from todo_rls.session import APP_ROLE

# The login role the plugin's app connections use: cluster-wide, created idempotently and never
# dropped (other runs against the same server may be using it), a member of todo_app only.
LOGIN_ROLE = "todo_rls_plugin_app"
# A test server's role, on a throwaway database: the password guards nothing real.
LOGIN_PASSWORD = "todo_rls_plugin"  # noqa: S105
_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server and its superuser; host may be a Unix-socket folder."""

    host: str
    port: int
    user: str
    password: str | None = None

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

    def connect(self, dbname: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        """A psycopg connection to dbname as the superuser."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            **kwargs,
        )


def ensure_login_role(conn: psycopg.Connection[Any], name: str = LOGIN_ROLE) -> str:
    """Create LOGIN role name if absent and make it a member of todo_app; return name."""
    role = sql.Identifier(name)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("create role {} login nosuperuser nobypassrls password {}").format(
                    role, sql.Literal(LOGIN_PASSWORD)
                )
            )
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass  # another run, maybe on another database of this cluster, created it first
    # The same password every run sets, so a server that checks passwords lets the tests in.
    conn.execute(sql.SQL("alter role {} password {}").format(role, sql.Literal(LOGIN_PASSWORD)))
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(APP_ROLE), role))
    unsafe = conn.execute(
        "select rolsuper or rolbypassrls from pg_catalog.pg_roles where rolname = %s", (name,)
    ).fetchone()
    if unsafe is None or unsafe[0]:
        raise UnsafeRoleError(
            f"role {name} exists with SUPERUSER or BYPASSRLS, so RLS would not bind it: "
            f"alter role {name} nosuperuser nobypassrls"
        )
    return name


def new_user_id() -> str:
    """A fresh id shaped like Better Auth's (32 alphanumeric characters)."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))


def create_user(conn: psycopg.Connection[Any], user_id: str | None = None) -> str:
    """Insert a Better Auth user (connected as the superuser) and return its id."""
    user_id = user_id or new_user_id()
    conn.execute(
        'insert into "user" (id, name, email, "emailVerified") values (%s, %s, %s, true)',
        (user_id, f"user {user_id[:6]}", f"{user_id}@example.test"),
    )
    return user_id


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


def migrate_database(server: Server, dbname: str, downstream: Sequence[Path] = ()) -> None:
    """Better Auth's "user" table, todo-rls's migrations, then each downstream alembic.ini."""
    with server.connect(dbname, autocommit=True) as conn:
        conn.execute(BETTER_AUTH_USER_DDL)
    url = server.url(dbname)
    migrate.upgrade(url.render_as_string(hide_password=False))
    for alembic_ini in downstream:
        _upgrade_downstream(url, alembic_ini)
    with server.connect(dbname, autocommit=True) as conn:
        ensure_login_role(conn)
