"""What a run killed outright left is dropped by the next run: its tablespaces on the RAM disk,
with their databases (tests/ram_tablespace.py), and its login roles (tests/orphans.py). What a
run still going made, and a role that could be a person's, is not."""

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.testing.citus import new_database_name

import orphans
import ram_tablespace
from fix_server import PgServer

# The runs of test_leftover_roles drop orphans too when they start: not meanwhile.
pytestmark = pytest.mark.xdist_group("orphans")


@pytest.fixture
def server_admin(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    """The superuser on the server's postgres database (tablespaces and databases are the
    server's, not a test database's)."""
    with pg_server.connect("postgres", autocommit=True) as conn:
        yield conn


@contextmanager
def left_behind(
    pg_server: PgServer, pid: int
) -> Iterator[tuple[ram_tablespace.RamTablespace, str]]:
    """A tablespace on the RAM disk named as make() names one of process pid, and a database in
    it: (tablespace, database). Whatever the test left of them is dropped after."""
    name = f"todo_rls_test_ts_{pid}_abc123"
    tablespace = ram_tablespace.make(pg_server, name)
    if tablespace is None:
        pytest.skip("the server cannot have a tablespace on this machine's RAM disk")
    database = new_database_name()
    try:
        with pg_server.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("create database {} tablespace {}").format(
                    sql.Identifier(database), sql.Identifier(name)
                )
            )
        yield tablespace, database
    finally:
        with pg_server.connect("postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(database)))
            conn.execute(sql.SQL("drop tablespace if exists {}").format(sql.Identifier(name)))
        shutil.rmtree(tablespace.location, ignore_errors=True)


def exist(admin: psycopg.Connection[Any], tablespace: str, database: str) -> tuple[bool, bool]:
    row = admin.execute(
        "select exists (select from pg_catalog.pg_tablespace where spcname = %s),"
        " exists (select from pg_catalog.pg_database where datname = %s)",
        (tablespace, database),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_tablespace_of_a_run_still_going_is_kept(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    with left_behind(pg_server, pid=os.getpid()) as (tablespace, database):
        assert tablespace.name not in ram_tablespace.drop_orphans(pg_server)
        assert exist(server_admin, tablespace.name, database) == (True, True)


def test_a_tablespace_of_a_killed_run_is_dropped_with_its_databases(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    with left_behind(pg_server, orphans.ended_process_id()) as (tablespace, database):
        assert exist(server_admin, tablespace.name, database) == (True, True)  # the control
        assert tablespace.name in ram_tablespace.drop_orphans(pg_server)
        assert exist(server_admin, tablespace.name, database) == (False, False)


def test_a_tablespace_whose_folder_is_gone_is_dropped_though_its_pid_lives(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    # The machine restarted (the RAM disk is empty), and a new process got the old pid.
    with left_behind(pg_server, pid=os.getpid()) as (tablespace, database):
        shutil.rmtree(tablespace.location)
        assert tablespace.name in ram_tablespace.drop_orphans(pg_server)
        assert exist(server_admin, tablespace.name, database) == (False, False)


@contextmanager
def left_login_role(
    admin: psycopg.Connection[Any], pid: int, expires: bool = True
) -> Iterator[str]:
    """A login role named as a run of process pid names its roles, valid for a day as the
    runs make them (or with no end, as a person's may be); dropped after if still there."""
    name = f"todo_rls_test_app_{pid}_abc123"
    valid = sql.SQL(" valid until {}").format(sql.Literal("tomorrow")) if expires else sql.SQL("")
    admin.execute(
        sql.SQL("create role {} login password {}{}").format(
            sql.Identifier(name), sql.Literal(secrets.token_urlsafe(24)), valid
        )
    )
    try:
        yield name
    finally:
        admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def role_exists(admin: psycopg.Connection[Any], name: str) -> bool:
    row = admin.execute("select count(*) from pg_catalog.pg_roles where rolname = %s", (name,))
    return row.fetchone() == (1,)


def test_a_login_role_of_a_killed_run_is_dropped(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    with left_login_role(server_admin, orphans.ended_process_id()) as role:
        assert role_exists(server_admin, role)  # the control
        assert role in orphans.drop_orphan_roles(pg_server)
        assert not role_exists(server_admin, role)


def test_a_login_role_of_a_run_still_going_is_kept(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    with left_login_role(server_admin, os.getpid()) as role:
        assert role not in orphans.drop_orphan_roles(pg_server)
        assert role_exists(server_admin, role)


def test_a_login_role_that_never_expires_is_kept_whatever_its_name(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    # A person's role may look like a run's; the runs' own expire within a day.
    with left_login_role(server_admin, orphans.ended_process_id(), expires=False) as role:
        assert role not in orphans.drop_orphan_roles(pg_server)
        assert role_exists(server_admin, role)


def test_a_login_role_of_a_killed_run_that_owns_something_is_kept_and_named(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    with left_login_role(server_admin, orphans.ended_process_id()) as role:
        database = new_database_name()
        owned = sql.SQL("create database {} owner {}")
        server_admin.execute(owned.format(sql.Identifier(database), sql.Identifier(role)))
        try:
            dropped = orphans.drop_orphan_roles(pg_server)
        finally:
            server_admin.execute(sql.SQL("drop database {}").format(sql.Identifier(database)))
        (named,) = [entry for entry in dropped if entry.startswith(role)]
        assert named.startswith(f"{role} (left: "), named
        assert role_exists(server_admin, role)
