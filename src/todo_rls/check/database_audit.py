"""Connect to a live database read-only and run every rule of `todo-rls check` over it."""

from collections.abc import Sequence

import psycopg

from todo_rls.check.context import DEFAULT_ALLOW, Conn, Context, load_context
from todo_rls.check.findings import Finding
from todo_rls.check.rules import run_rules
from todo_rls.engine import database_url

DEFAULT_SCHEMA = "public"
DEFAULT_APP_ROLE = "todo_app"
__all__ = ["DEFAULT_ALLOW", "DEFAULT_APP_ROLE", "DEFAULT_SCHEMA", "audit", "connect"]
CONNECT_TIMEOUT = 10  # seconds: long enough for a suspended Neon compute to wake
# The audit's queries name pg_catalog's objects, but operators, casts and the regclass and
# regprocedure names they print resolve through search_path. Set transaction-local, so a
# look-alike in another schema stays out of the checks and nothing leaks into a pooled session;
# audit() sets it itself, after whatever the caller's transaction set.
_PIN_SEARCH_PATH = "select pg_catalog.set_config('search_path', 'pg_catalog', true)"


def connect(url: str | None) -> Conn:
    """A read-only connection to url (default: $DATABASE_URL); any role can run the checks."""
    parsed = database_url(url)  # DatabaseUrlError (exit 2) when missing or not PostgreSQL
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    # No prepared statements: the URL may be a transaction-mode pooler (Neon's -pooler host).
    conn = psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT, prepare_threshold=None)
    conn.read_only = True
    return conn


def audit(
    conn: Conn,
    schema: str = DEFAULT_SCHEMA,
    app_role: str = DEFAULT_APP_ROLE,
    allow: Sequence[str] = DEFAULT_ALLOW,
    login_roles: Sequence[str] | None = None,
) -> tuple[Context, list[Finding]]:
    """Run every rule against conn's database, in conn's transaction (search_path pinned for
    it); the context says what was looked at.

    Raises ValueError if conn autocommits: the pin is transaction-local.
    """
    if conn.autocommit:
        raise ValueError("the audit needs a transaction: its pinned search_path is local")
    conn.execute(_PIN_SEARCH_PATH)
    roles = list(login_roles) if login_roles is not None else None
    ctx = load_context(conn, schema, app_role, list(allow), roles)
    return ctx, run_rules(ctx)
