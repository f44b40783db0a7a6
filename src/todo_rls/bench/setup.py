"""The bench's own database (created once, reused) and each run's login roles (dropped after)."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import URL, make_url

from todo_rls import keys, migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.engine import database_url
from todo_rls.errors import TodoRlsError
from todo_rls.identity import KEY_ENV, SigningKey
from todo_rls.login_roles import is_local_host, password_clause
from todo_rls.session import APP_ROLE

# Each run makes two login roles of its own and drops them when it ends (or fails):
# (a) <prefix>_app_<pid>_<hex>, what a deployment logs in as, a member of todo_app that
#     row-level security binds;
# (b) <prefix>_bypass_<pid>_<hex>, the hand-filtered baseline: BYPASSRLS, so its queries skip
#     the policies entirely. It reads every user's rows, so it must not outlive the run.
BENCH_ROLE_PREFIX = "todo_rls_bench"
# A run killed before it drops its roles leaves logins nobody knows the password of, and they
# stop working after this long (10m takes about an hour).
LOGIN_VALID_FOR = timedelta(days=1)


class BenchSetupError(TodoRlsError):
    """The bench cannot set itself up with the URL it was given; the message says what to fix."""


def bench_database(scale: str) -> str:
    """The database name of one scale, so runs at different scales never share data."""
    return f"todo_rls_bench_{scale}"


def admin_connect(url: URL, dbname: str | None = None) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection as the admin, to url's database or dbname."""
    target = url.set(drivername="postgresql", database=dbname or url.database)
    return psycopg.connect(target.render_as_string(hide_password=False), autocommit=True)


def _require_superuser(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "select current_user::text, rolsuper from pg_catalog.pg_roles where rolname = current_user"
    ).fetchone()
    if row is None or not row[1]:
        raise BenchSetupError(
            f"role {row[0] if row else '?'} is not a superuser: the bench creates a database and "
            "a BYPASSRLS login role for the run; pass a superuser's URL with --url"
        )


def _ensure_database(conn: psycopg.Connection[Any], dbname: str) -> None:
    found = conn.execute("select from pg_catalog.pg_database where datname = %s", (dbname,))
    if found.fetchone() is None:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))


@dataclass(frozen=True)
class BenchLogins:
    """The run's two login roles, and the URLs of the bench database as each of them."""

    admin: URL
    app_url: URL
    bypass_url: URL

    @property
    def roles(self) -> tuple[str, str]:
        return str(self.app_url.username), str(self.bypass_url.username)


def _role_name(kind: str) -> str:
    return f"{BENCH_ROLE_PREFIX}_{kind}_{os.getpid()}_{secrets.token_hex(4)}"


def _create_login_role(conn: psycopg.Connection[Any], name: str, bypass: bool) -> str:
    """Create login role name with a fresh password valid for LOGIN_VALID_FOR; the password."""
    password = secrets.token_urlsafe(24)
    attributes = sql.SQL("bypassrls" if bypass else "nobypassrls")
    with conn.transaction():
        conn.execute(
            sql.SQL("create role {} login nosuperuser nocreaterole {} {}").format(
                sql.Identifier(name), attributes, password_clause(conn, password, LOGIN_VALID_FOR)
            )
        )
        # Both reach the tables through todo_app's grants: same privileges, only RLS differs.
        conn.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(APP_ROLE), sql.Identifier(name))
        )
    return password


def drop_bench_roles(logins: BenchLogins) -> None:
    """End of a run: drop its login roles (the BYPASSRLS one reads every user's rows). They own
    nothing and hold nothing but membership in todo_app, so DROP ROLE takes them whole."""
    with admin_connect(logins.admin) as conn:
        for name in logins.roles:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@contextmanager
def run_signing_key(admin: URL) -> Iterator[SigningKey]:
    """A random key for this run only: installed in the bench database and given to the
    scoped sessions through $TODO_RLS_SIGNING_KEY (as a deployment does), then removed and the
    variable restored, whatever happened. The bench never signs with a deployment's key."""
    key = SigningKey(os.urandom(32))
    with admin_connect(admin) as conn:
        keys.add(conn, key)
    before = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = key.secret.hex()
    try:
        yield key
    finally:
        if before is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = before
        with admin_connect(admin) as conn:
            keys.remove(conn, key.key_id)


def _hosts(url: URL) -> list[str]:
    """The hosts libpq would try for url: host, or ?host= (a Unix-socket folder), or none."""
    if url.host:
        return url.host.split(",")
    query = url.query.get("host")
    named = [query] if isinstance(query, str) else list(query or ())
    return [host for value in named for host in value.split(",")]


def require_local_server(url: URL, allow_remote: bool) -> None:
    """Refuse a server that is not this machine unless allow_remote: the bench creates a
    BYPASSRLS login role, which on a shared or production server must be a decision."""
    remote = [host for host in _hosts(url) if not is_local_host(host)]
    if remote and not allow_remote:
        raise BenchSetupError(
            f"{', '.join(remote)} is not this machine; the bench creates a database and, for "
            "the length of the run, a BYPASSRLS login role there. Use a throwaway local server, "
            "or pass --allow-remote-server"
        )


def prepare_database(admin_url: str, dbname: str, *, allow_remote: bool = False) -> BenchLogins:
    """Create (if absent) and migrate dbname, and this run's two login roles; drop them with
    drop_bench_roles. Refuses a server that is not this machine unless allow_remote."""
    url = database_url(admin_url)
    require_local_server(url, allow_remote)
    with admin_connect(url) as conn:
        _require_superuser(conn)
        _ensure_database(conn, dbname)
    bench_url = url.set(database=dbname)
    with admin_connect(bench_url) as conn:
        if conn.execute("select pg_catalog.to_regclass('public.\"user\"')").fetchone() == (None,):
            conn.execute(BETTER_AUTH_USER_DDL)
    migrate.upgrade(bench_url.render_as_string(hide_password=False))  # creates todo_app
    app, bypass = _role_name("app"), _role_name("bypass")
    with admin_connect(bench_url) as conn:
        app_password = _create_login_role(conn, app, bypass=False)
        try:
            bypass_password = _create_login_role(conn, bypass, bypass=True)
        except BaseException:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(app)))
            raise
    return BenchLogins(
        bench_url,
        bench_url.set(username=app, password=app_password),
        bench_url.set(username=bypass, password=bypass_password),
    )


def render(url: URL) -> str:
    """url as a string with its password, for engines and psycopg."""
    return str(make_url(url).render_as_string(hide_password=False))
