"""Test databases on a Citus cluster: made on every node, with the extension and the nodes
registered, and dropped on every node.

A database on Citus is more than CREATE DATABASE on the coordinator: the workers need the
database too (Citus propagates CREATE DATABASE when citus.enable_create_database_propagation is
on), the extension in it on every node, and the nodes registered in the coordinator's copy.
CREATE DATABASE ... TEMPLATE copies none of that to the workers, so each test database is
made and migrated afresh (a few seconds on a 3-node cluster on one machine).
"""

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from todo_rls.errors import TodoRlsError
from todo_rls.testing.database import Server

# Four shards per table instead of Citus's default 32: distributing is what a test database
# costs, and routing, co-location and policies work the same with four.
TEST_SHARD_COUNT = 4
DATABASE_PREFIX = "todo_rls_citus"

_NODES = """
select groupid, nodename::text, nodeport from pg_catalog.pg_dist_node
where noderole = 'primary' and isactive order by groupid, nodeid
"""

# A drop ends the database's sessions first and waits at most this long for them to go; a drop
# that still finds one (it connected meanwhile) is tried _DROP_ATTEMPTS times in all.
_SESSIONS_GONE_SECONDS = 5.0
_DROP_ATTEMPTS = 3
_END_SESSIONS = """
select count(pg_catalog.pg_terminate_backend(pid))::int from pg_catalog.pg_stat_activity
where datname = %s and pid <> pg_catalog.pg_backend_pid()
"""

# Who holds a database a drop cannot end (reported with the error).
_SESSIONS = """
select pid, backend_type, application_name, state, backend_start from pg_catalog.pg_stat_activity
where datname = %s
"""


class NotACitusCoordinatorError(TodoRlsError):
    """The server's database has no citus extension or no registered coordinator and workers."""


@dataclass(frozen=True)
class CitusCluster:
    """A coordinator (as its superuser) and the nodes registered in its database."""

    coordinator: Server
    coordinator_host: tuple[str, int]  # as registered: what the workers connect back to
    workers: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, server: Server, dbname: str = "postgres") -> "CitusCluster":
        """The cluster registered in server's database dbname, as `cluster.sh start` leaves
        postgres. Raises NotACitusCoordinatorError naming what is missing."""
        with server.connect(dbname, autocommit=True, connect_timeout=10) as conn:
            try:
                rows = conn.execute(_NODES).fetchall()
            except psycopg.errors.UndefinedTable:
                rows = []
        coordinator = [(host, port) for group, host, port in rows if group == 0]
        workers = tuple((host, port) for group, host, port in rows if group != 0)
        if not coordinator or not workers:
            raise NotACitusCoordinatorError(
                f"{server.host}:{server.port}/{dbname} has no registered coordinator and workers"
                f" (pg_dist_node: {rows}): create extension citus there, then"
                " select citus_set_coordinator_host(...) and citus_add_node(...) per worker"
            )
        return cls(server, coordinator[0], workers)

    def node(self, host: str, port: int) -> Server:
        """The server at host:port, with the coordinator's superuser and tablespace."""
        coordinator = self.coordinator
        return Server(host, port, coordinator.user, coordinator.password, coordinator.tablespace)

    def workers_without_tablespace(self) -> list[Server]:
        """The workers that have no tablespace named as the coordinator's (none: all have)."""
        return [node for node in self.nodes[1:] if not node.has_tablespace()]

    @property
    def nodes(self) -> tuple[Server, ...]:
        """The coordinator, then each worker."""
        return (self.coordinator, *(self.node(*worker) for worker in self.workers))

    def create_database(self, name: str, shard_count: int | None = TEST_SHARD_COUNT) -> None:
        """Database name on every node, with citus in each and this cluster's nodes registered."""
        self.create_plain_database(name, shard_count)
        self.add_citus(name)

    def create_plain_database(self, name: str, shard_count: int | None = TEST_SHARD_COUNT) -> None:
        """Database name on every node (propagated CREATE DATABASE), without the extension, in
        the coordinator's tablespace (Citus propagates the name: each node needs its own)."""
        identifier = sql.Identifier(name)
        with self.coordinator.connect("postgres", autocommit=True) as conn:
            conn.execute("set citus.enable_create_database_propagation = on")
            conn.execute(self.coordinator.create_database_sql(name))
            if shard_count is not None:
                conn.execute(
                    sql.SQL("alter database {} set citus.shard_count = {}").format(
                        identifier, sql.Literal(shard_count)
                    )
                )

    def add_citus(self, name: str) -> None:
        """The extension in database name on every node, and the nodes registered in it."""
        for server in reversed(self.nodes):  # the workers first, the coordinator last
            with server.connect(name, autocommit=True) as conn:
                conn.execute("create extension if not exists citus")
        with self.coordinator.connect(name, autocommit=True) as conn:
            conn.execute(
                "select pg_catalog.citus_set_coordinator_host(%s, %s)", self.coordinator_host
            )
            for host, port in self.workers:
                conn.execute("select pg_catalog.citus_add_node(%s, %s)", (host, port))

    def drop_database(self, name: str) -> None:
        """Drop name on every node, one node after another: the coordinator first, then each
        worker drops its own copy (also when a killed run left it on some nodes only). Each
        node's own drop also removes its pg_dist_object row, as Citus's propagated one does.

        A session that connects as the drop begins can outlive DROP ... WITH (FORCE), which
        then waits PostgreSQL's 5 seconds for it and fails ("1 other session"). Seen in a run of
        the Citus group: the database's maintenance daemon started 9 ms before the coordinator's
        drop (the server's log). So each node first ends the database's sessions and waits
        until none is left, and a drop that still finds one is tried again.
        """
        drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        for server in self.nodes:
            with server.connect("postgres", autocommit=True) as conn:
                conn.execute("set citus.enable_create_database_propagation = off")
                for attempt in range(_DROP_ATTEMPTS):
                    _end_sessions(conn, name)
                    try:
                        conn.execute(drop)
                        break
                    except psycopg.errors.ObjectInUse as error:
                        if attempt == _DROP_ATTEMPTS - 1:
                            raise _with_sessions(error, conn, name, server) from None

    @contextmanager
    def database(
        self, shard_count: int | None = TEST_SHARD_COUNT, citus: bool = True
    ) -> Iterator[str]:
        """A fresh database on every node (with citus unless citus=False), dropped after."""
        name = new_database_name()
        try:
            if citus:
                self.create_database(name, shard_count)
            else:
                self.create_plain_database(name, shard_count)
            yield name
        finally:
            self.drop_database(name)

    def on_every_node(self, dbname: str, query: str, *params: Any) -> list[list[tuple[Any, ...]]]:
        """The rows of query on each node (coordinator first), as the superuser."""
        results = []
        for server in self.nodes:
            with server.connect(dbname, autocommit=True) as conn:
                results.append(conn.execute(query, params or None).fetchall())
        return results


def _end_sessions(conn: psycopg.Connection[Any], name: str) -> None:
    """End every session of database name on conn's server (bgworkers such as Citus's
    maintenance daemon too) and wait until none is left, _SESSIONS_GONE_SECONDS at most."""
    deadline = time.monotonic() + _SESSIONS_GONE_SECONDS
    while (conn.execute(_END_SESSIONS, (name,)).fetchone() or (0,))[0]:
        if time.monotonic() > deadline:
            return  # the drop will name who holds it
        time.sleep(0.01)


def _with_sessions(
    error: psycopg.Error, conn: psycopg.Connection[Any], name: str, server: Server
) -> psycopg.Error:
    """error, with the sessions that hold database name on server (conn's) as its notes."""
    error.add_note(f"sessions in {name} on {server.host}:{server.port}:")
    for session in conn.execute(_SESSIONS, (name,)):
        error.add_note(f"  {session}")
    return error


def new_database_name() -> str:
    """A name no other run uses: todo_rls_citus_<pid>_<hex>."""
    return f"{DATABASE_PREFIX}_{os.getpid()}_{secrets.token_hex(4)}"
