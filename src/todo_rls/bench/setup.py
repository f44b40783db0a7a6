"""The bench's own database and login roles, created idempotently with an admin URL."""

import secrets
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import URL, make_url

from todo_rls import migrate
from todo_rls.demo import BETTER_AUTH_USER_DDL
from todo_rls.engine import database_url
from todo_rls.errors import TodoRlsError
from todo_rls.login_roles import is_local_host, password_clause
from todo_rls.session import APP_ROLE

# (a): what a deployment logs in as, a member of todo_app that row-level security binds.
BENCH_APP_ROLE = "todo_rls_bench_app"
# (b): the hand-filtered baseline; BYPASSRLS, so its queries skip the policies entirely.
BENCH_BYPASS_ROLE = "todo_rls_bench_bypass"
# How long each run's passwords are valid: longer than any run (10m takes about an hour), short
# enough that a run that dies before disabling the bypass login leaves no lasting way in.
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
            f"a BYPASSRLS role ({BENCH_BYPASS_ROLE}); pass a superuser's URL with --url"
        )


def _ensure_database(conn: psycopg.Connection[Any], dbname: str) -> None:
    found = conn.execute("select from pg_catalog.pg_database where datname = %s", (dbname,))
    if found.fetchone() is None:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))


def _ensure_login_role(conn: psycopg.Connection[Any], name: str, bypass: bool) -> str:
    """Create role name if absent, (re)set its attributes and a fresh password valid for
    LOGIN_VALID_FOR; return the password."""
    role, password = sql.Identifier(name), secrets.token_urlsafe(24)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("create role {} login").format(role))
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass  # an earlier run (maybe at another scale) created it, and disabled its login
    attributes = sql.SQL("bypassrls" if bypass else "nobypassrls")
    conn.execute(
        sql.SQL("alter role {} login nosuperuser nocreaterole {} {}").format(
            role, attributes, password_clause(conn, password, LOGIN_VALID_FOR)
        )
    )
    # Both roles reach the tables through todo_app's grants: same privileges, only RLS differs.
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(APP_ROLE), role))
    return password


def disable_bypass_login(admin: URL) -> None:
    """End of a run: the BYPASSRLS role reads every user's rows, so it may not log in until the
    next run sets a new password. (NOLOGIN, not DROP: it stays granted todo_app in every bench
    database, and a run at another scale may be using it.)"""
    with admin_connect(admin) as conn:
        conn.execute(sql.SQL("alter role {} nologin").format(sql.Identifier(BENCH_BYPASS_ROLE)))


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
            f"{', '.join(remote)} is not this machine; the bench creates a database and a "
            f"BYPASSRLS login role ({BENCH_BYPASS_ROLE}) there. Use a throwaway local server, "
            "or pass --allow-remote-server"
        )


def prepare_database(
    admin_url: str, dbname: str, *, allow_remote: bool = False
) -> tuple[URL, URL, URL]:
    """Create (if absent) and migrate dbname; the admin, app and bypass URLs of it. Refuses a
    server that is not this machine unless allow_remote."""
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
    with admin_connect(bench_url) as conn:
        app_password = _ensure_login_role(conn, BENCH_APP_ROLE, bypass=False)
        bypass_password = _ensure_login_role(conn, BENCH_BYPASS_ROLE, bypass=True)
    return (
        bench_url,
        bench_url.set(username=BENCH_APP_ROLE, password=app_password),
        bench_url.set(username=BENCH_BYPASS_ROLE, password=bypass_password),
    )


def render(url: URL) -> str:
    """url as a string with its password, for engines and psycopg."""
    return str(make_url(url).render_as_string(hide_password=False))
