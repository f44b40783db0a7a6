"""A tablespace a run killed outright left on the RAM disk is dropped by the next run, with its
databases (tests/ram_tablespace.py); one of a run still going is not."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.testing.citus import new_database_name

import ram_tablespace
from fix_server import PgServer

# The runs of test_leftover_roles drop orphans too when they start: not meanwhile.
pytestmark = pytest.mark.xdist_group("orphan_tablespaces")


@pytest.fixture
def server_admin(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    """The superuser on the server's postgres database (tablespaces and databases are the
    server's, not a test database's)."""
    with pg_server.connect("postgres", autocommit=True) as conn:
        yield conn


def gone_process_id() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen(["true"])  # noqa: S607 - coreutils, no input
    process.wait()
    return process.pid


@contextmanager
def left_behind(pg_server: PgServer, pid: int) -> Iterator[tuple[str, str]]:
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
        yield name, database
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
        assert tablespace not in ram_tablespace.drop_orphans(pg_server)
        assert exist(server_admin, tablespace, database) == (True, True)


def test_a_tablespace_of_a_killed_run_is_dropped_with_its_databases(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    with left_behind(pg_server, gone_process_id()) as (tablespace, database):
        assert exist(server_admin, tablespace, database) == (True, True)  # the control
        assert tablespace in ram_tablespace.drop_orphans(pg_server)
        assert exist(server_admin, tablespace, database) == (False, False)


def test_a_tablespace_whose_folder_is_gone_is_dropped_though_its_pid_lives(
    pg_server: PgServer, server_admin: psycopg.Connection[Any]
) -> None:
    # The machine restarted (the RAM disk is empty), and a new process got the old pid.
    with left_behind(pg_server, pid=os.getpid()) as (tablespace, database):
        row = server_admin.execute(
            "select pg_catalog.pg_tablespace_location(oid) from pg_catalog.pg_tablespace"
            " where spcname = %s",
            (tablespace,),
        ).fetchone()
        assert row is not None
        shutil.rmtree(row[0])
        assert tablespace in ram_tablespace.drop_orphans(pg_server)
        assert exist(server_admin, tablespace, database) == (False, False)
