"""todo_rls.testing.database, which the plugin and this suite's fixtures share: login roles are
made as asked, and an existing wrong one, or one that can SET ROLE past RLS, is refused
untouched; the server helpers."""

import re
import secrets
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.errors import TodoRlsError, UnsafeRoleError
from todo_rls.testing.database import Server, ensure_login_role, server_from_setting

from fix_db import CreateRole, run_role_name
from fix_server import PgServer

PASSWORD = secrets.token_urlsafe(24)  # per run: no fixed password on a login role


def role_facts(admin: psycopg.Connection[Any], name: str) -> tuple[Any, ...]:
    """(login, superuser, bypassrls, granted todo_app) of role name."""
    # pg_auth_members, not pg_has_role: a superuser "has" every role without a grant.
    row = admin.execute(
        "select rolcanlogin, rolsuper, rolbypassrls, exists (select from pg_catalog.pg_auth_members"
        "   where member = r.oid and roleid = 'todo_app'::regrole)"
        " from pg_catalog.pg_roles r where rolname = %s",
        (name,),
    ).fetchone()
    assert row is not None, f"no role {name}"
    return tuple(row)


@pytest.fixture
def new_role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A unique role name nobody has created yet; the role is dropped after the test."""
    name = run_role_name("ensure")
    yield name
    admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_a_new_login_role_is_a_plain_member_of_todo_app_that_can_log_in(
    admin: psycopg.Connection[Any], new_role: str, pg_server: PgServer, dbname: str
) -> None:
    assert ensure_login_role(admin, new_role, PASSWORD) == new_role
    assert role_facts(admin, new_role) == (True, False, False, True)
    with pg_server.connect(dbname, user=new_role, password=PASSWORD) as conn:
        assert conn.execute("select current_user::text").fetchone() == (new_role,)


def test_a_new_bypass_role_bypasses_rls(admin: psycopg.Connection[Any], new_role: str) -> None:
    ensure_login_role(admin, new_role, PASSWORD, bypass_rls=True)
    assert role_facts(admin, new_role) == (True, False, True, True)


def test_an_existing_role_with_the_asked_attributes_is_reused(
    admin: psycopg.Connection[Any], create_role: CreateRole
) -> None:
    plain = create_role("plain", "login")
    bypass = create_role("bypass", "login", "bypassrls")
    ensure_login_role(admin, plain, PASSWORD)
    ensure_login_role(admin, bypass, PASSWORD, bypass_rls=True)
    assert role_facts(admin, plain) == (True, False, False, True)
    assert role_facts(admin, bypass) == (True, False, True, True)


@pytest.mark.parametrize(
    ("attributes", "bypass_rls", "error", "fix"),
    [
        (("login", "bypassrls"), False, UnsafeRoleError, "nobypassrls (RLS would not bind it)"),
        (("login", "superuser"), False, UnsafeRoleError, "nosuperuser (RLS would not bind it)"),
        (("login",), True, TodoRlsError, "bypassrls"),
        (("nologin",), False, TodoRlsError, "login"),
    ],
)
def test_an_existing_role_without_the_asked_attributes_is_refused_untouched(
    admin: psycopg.Connection[Any],
    create_role: CreateRole,
    attributes: tuple[str, ...],
    bypass_rls: bool,
    error: type[Exception],
    fix: str,
) -> None:
    name = create_role("wrong", *attributes)
    before = role_facts(admin, name)
    with pytest.raises(error, match=re.escape(f"alter role {name} {fix}") + "$"):
        ensure_login_role(admin, name, PASSWORD, bypass_rls=bypass_rls)
    # Not granted todo_app, attributes as they were: nothing half-written.
    assert role_facts(admin, name) == before
    assert before[3] is False


def test_a_password_valid_for_a_while_expires(
    admin: psycopg.Connection[Any], new_role: str
) -> None:
    ensure_login_role(admin, new_role, PASSWORD, valid_for=timedelta(hours=2))
    window = admin.execute(
        "select rolvaliduntil > now() + interval '1 hour',"
        " rolvaliduntil <= now() + interval '2 hours'"
        " from pg_catalog.pg_roles where rolname = %s",
        (new_role,),
    ).fetchone()
    assert window == (True, True)


def grant(admin: psycopg.Connection[Any], role: str, to: str) -> None:
    admin.execute(sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(to)))


@pytest.mark.parametrize("through_a_group", [False, True], ids=["direct", "through a group"])
@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("bypassrls", "BYPASSRLS"),  # Neon's console roles: members of neon_superuser
        ("superuser", "a superuser"),
        ("owner", "owner of tables with row level security"),
        # PostgreSQL 15: CREATEROLE grants itself membership in any non-superuser role.
        ("createrole", "CREATEROLE: it can grant itself a role RLS does not bind"),
    ],
)
def test_a_role_that_can_set_role_past_rls_is_refused_untouched(
    admin: psycopg.Connection[Any],
    create_role: CreateRole,
    table_owner: str,
    kind: str,
    why: str,
    through_a_group: bool,
) -> None:
    login = create_role("login", "login")
    escape = table_owner if kind == "owner" else create_role("escape", "nologin", kind)
    member = create_role("group", "nologin") if through_a_group else login
    grant(admin, escape, member)
    if through_a_group:
        grant(admin, member, login)
    before = role_facts(admin, login)
    with pytest.raises(UnsafeRoleError) as refused:
        ensure_login_role(admin, login, PASSWORD, valid_for=timedelta(days=1))
    assert f"role {login} can SET ROLE to a role" in str(refused.value)
    assert f"revoke {escape} from {member} ({why})" in str(refused.value)
    # One transaction: not granted todo_app, no password or expiry set.
    assert role_facts(admin, login) == before
    assert before[3] is False
    expiry = admin.execute(
        "select rolvaliduntil from pg_catalog.pg_roles where rolname = %s", (login,)
    ).fetchone()
    assert expiry == (None,)
    # The fix it names works.
    admin.execute(
        sql.SQL("revoke {} from {}").format(sql.Identifier(escape), sql.Identifier(member))
    )
    assert ensure_login_role(admin, login, PASSWORD) == login


def test_an_existing_createrole_login_role_is_refused_untouched(
    admin: psycopg.Connection[Any], create_role: CreateRole
) -> None:
    plain = create_role("plain", "login")
    assert ensure_login_role(admin, plain, PASSWORD) == plain  # positive control
    login = create_role("creator", "login", "createrole")
    before = role_facts(admin, login)
    fix = f"alter role {login} nocreaterole"
    with pytest.raises(UnsafeRoleError, match=re.escape(f"{fix} (CREATEROLE: it can grant")):
        ensure_login_role(admin, login, PASSWORD)
    assert role_facts(admin, login) == before
    assert before[3] is False
    admin.execute(fix.encode())  # the fix it names works
    assert ensure_login_role(admin, login, PASSWORD) == login


def test_a_role_that_owns_a_table_with_rls_is_refused(
    admin: psycopg.Connection[Any], table_owner: str
) -> None:
    admin.execute(sql.SQL("alter role {} login").format(sql.Identifier(table_owner)))
    with pytest.raises(UnsafeRoleError, match=r"alter table task owner to <the migrations' role>"):
        ensure_login_role(admin, table_owner, PASSWORD)


def test_unreachable_says_why_or_none(pg_server: PgServer) -> None:
    assert pg_server.unreachable() is None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
        nobody = Server("127.0.0.1", int(sock.getsockname()[1]), "postgres")
        problem = nobody.unreachable(timeout=2)
    assert problem is not None
    assert "\n" not in problem
    assert "refused" in problem


def test_a_scratch_database_is_dropped_even_with_a_connection_left_open(
    pg_server: PgServer, admin: psycopg.Connection[Any]
) -> None:
    exists = "select count(*) from pg_catalog.pg_database where datname = %s"
    with pg_server.scratch_database() as name:
        assert admin.execute(exists, (name,)).fetchone() == (1,)
        left_open = pg_server.connect(name)
    try:
        assert admin.execute(exists, (name,)).fetchone() == (0,)
    finally:
        left_open.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_server_from_setting_reads_a_url(scheme: str, tmp_path: Path) -> None:
    server = server_from_setting(f"{scheme}://root:s3cret@db.example:6543/x", tmp_path)
    assert server == Server("db.example", 6543, "root", "s3cret")
    assert not any(tmp_path.iterdir()), "a URL must not start the embedded server"
