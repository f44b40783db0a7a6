"""The suite's databases on a RAM disk: a tablespace in /dev/shm, when the server runs on this
machine and that folder can be given to the server's OS user.

Why: a run makes about 170 databases on the system server (a template per worker, the shared
and own copies, scratch databases, the plugin's copies in its pytester runs), each a few hundred
files, and drops them again. On ext4 with no journal, creating a file walks past every inode
freed in the last minute, so the run's own drops make each later copy dearer: a copy of the
migrated template took 0.22 to 0.32 s in the default tablespace and 0.02 s in one on tmpfs
(docs/testing.md). The databases are throwaway, so a disk that forgets them on reboot costs
nothing.

One tablespace per run, made by the process that starts the run (the xdist controller, or the
only process) and named in $TODO_RLS_TEST_TABLESPACE, which the workers, the plugin's pytester
runs and the subprocesses inherit. It is dropped when the run ends; a database of the run still
in it fails the run, named, and is dropped. A run killed outright (SIGKILL, a CI timeout) leaves
it behind, named after its pid: the next run drops it, with its databases (drop_orphans).
"""

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from todo_rls.testing.database import Server, is_local_host

from orphans import left, process_exists

RAM_DISK = Path("/dev/shm")  # noqa: S108 - only mkdtemp makes folders in it (0700, unique)
# make()'s names: the pid of the process that made it, then random hex.
_NAME = re.compile(r"todo_rls_test_ts_(?P<pid>\d+)_[0-9a-f]{6}")
_FOLDER_PREFIX = "todo-rls-tablespace-"
# Below this much free space on the RAM disk the run keeps the server's default tablespace (a
# container's /dev/shm is often 64 MB: a few databases would fill it).
MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class RamTablespace:
    """A tablespace this run made, and its folder."""

    name: str
    location: Path


def make(server: Server, name: str | None = None) -> RamTablespace | None:
    """A new tablespace on the RAM disk (named name, or todo_rls_test_ts_<pid>_<hex>), or None
    where the server cannot have one (not on this machine, its files not visible here, no RAM
    disk or too small, not ours to give)."""
    if not is_local_host(server.host) or not RAM_DISK.is_dir():
        return None
    if shutil.disk_usage(RAM_DISK).free < MIN_FREE_BYTES:
        return None
    with server.connect("postgres", autocommit=True) as conn:
        (data_directory,) = conn.execute("show data_directory").fetchone() or ("",)
        try:
            server_uid = Path(data_directory).stat().st_uid
        except OSError:  # the server runs elsewhere (a container publishing its port)
            return None
        location = Path(tempfile.mkdtemp(prefix=_FOLDER_PREFIX, dir=RAM_DISK))
        name = name or f"todo_rls_test_ts_{os.getpid()}_{secrets.token_hex(3)}"
        try:
            if os.getuid() != server_uid:
                os.chown(location, server_uid, -1)  # PostgreSQL wants the folder its own
            conn.execute(
                sql.SQL("create tablespace {} location {}").format(
                    sql.Identifier(name), sql.Literal(str(location))
                )
            )
        except (PermissionError, psycopg.Error):
            shutil.rmtree(location, ignore_errors=True)
            return None
    return RamTablespace(name, location)


def drop(server: Server, tablespace: RamTablespace) -> list[str]:
    """Drop the tablespace and remove its folder; return the databases the run left in it
    (dropped first, so the server is clean either way)."""
    with server.connect("postgres", autocommit=True) as conn:
        left = sorted(
            conn.execute(
                "select d.datname::text, d.datistemplate from pg_catalog.pg_database d"
                " join pg_catalog.pg_tablespace t on t.oid = d.dattablespace"
                " where t.spcname = %s",
                (tablespace.name,),
            ).fetchall()
        )
        for name, is_template in left:
            database = sql.Identifier(name)
            if is_template:  # (a Citus worker refuses ALTER DATABASE; its copies are no templates)
                conn.execute(sql.SQL("alter database {} is_template false").format(database))
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(database))
        drop_tablespace = sql.SQL("drop tablespace if exists {}")
        conn.execute(drop_tablespace.format(sql.Identifier(tablespace.name)))
    shutil.rmtree(tablespace.location, ignore_errors=True)
    return [name for name, _ in left]


def drop_orphans(server: Server) -> list[str]:
    """Drop the tablespaces make() made on server for a process of this machine that is gone
    (a run killed outright), with the databases in them; return their names (with the error,
    for one that could not be dropped).

    Only names make() gives, in a folder it makes on the RAM disk: a tablespace of a run that
    is still going (its pid alive, here or a process of another user) is left alone. Two runs
    that start together may both drop the same orphan: drop() says `if exists`.
    """
    if not is_local_host(server.host):
        return []
    with server.connect("postgres", autocommit=True) as conn:
        rows = conn.execute(
            "select spcname::text, pg_catalog.pg_tablespace_location(oid)"
            " from pg_catalog.pg_tablespace"
        ).fetchall()
    orphans = [
        RamTablespace(name, Path(location))
        for name, location in rows
        if (named := _NAME.fullmatch(name))
        and Path(location).parent == RAM_DISK
        and Path(location).name.startswith(_FOLDER_PREFIX)
        # Its process is gone, or its folder is (the machine restarted since: the pid may
        # name another process by now).
        and not (process_exists(int(named["pid"])) and Path(location).is_dir())
    ]
    done = []
    for orphan in orphans:
        try:
            drop(server, orphan)
        except psycopg.Error as error:  # a run must still start: named, for a person to drop
            done.append(left(orphan.name, error))
            continue
        done.append(orphan.name)
    return done
