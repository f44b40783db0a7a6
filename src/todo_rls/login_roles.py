"""For tools that create login roles able to read every user's rows (the test plugin, the
bench): refuse servers that are not this machine, and let such logins expire."""

import ipaddress
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql


def is_local_host(host: str) -> bool:
    """Whether host is a Unix-socket folder, localhost or a loopback address (not resolved:
    a name that resolves to this machine today may not tomorrow)."""
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def password_clause(
    conn: psycopg.Connection[Any], password: str, valid_for: timedelta | None = None
) -> sql.Composed:
    """``password '...' [valid until '...']`` for CREATE/ALTER ROLE, expiring valid_for from
    the server's now()."""
    clause = sql.SQL("password {}").format(sql.Literal(password))
    if valid_for is not None:
        # The server's clock, in its own DateStyle: VALID UNTIL takes a literal, no expression.
        until = conn.execute("select (pg_catalog.now() + %s)::text", (valid_for,)).fetchone()
        assert until is not None
        clause += sql.SQL(" valid until {}").format(sql.Literal(until[0]))
    return clause
