"""What a run killed outright (SIGKILL, a CI timeout) leaves on a server of this machine, found
by the pid in its name and dropped by the next run: its login roles here, its tablespaces and
their databases in ram_tablespace.drop_orphans.

A login role of a run has a random password and expires a day after it was made, so a leftover
one is no way in; the next run still drops it, as the suite promises to leave the server as it
found it. Only what cannot be a person's: a name a run gives (todo_rls_<kind>_<pid>_<hex>), a
LOGIN role that expires within a day, and no live process with that pid on this machine.
"""

import os
import re
import subprocess

import psycopg
from psycopg import sql

from todo_rls.testing.database import Server, is_local_host

# The names runs give their roles (tests/fix_db.py, the plugin's, the bench's, the Citus
# group's): a kind, then the pid of the process that made it, then random hex.
_RUN_ROLE = re.compile(r"todo_rls_[a-z_]+?_(?P<pid>\d+)_[0-9a-f]+(?:_[0-9a-f]+)?")
_LOGIN_ROLES_THAT_EXPIRE_WITHIN_A_DAY = """
select rolname::text from pg_catalog.pg_roles
where rolname like 'todo\\_rls\\_%' and rolcanlogin and rolvaliduntil is not null
  and rolvaliduntil <= now() + interval '25 hours'
"""


def process_exists(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (any user's)."""
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def ended_process_id() -> int:
    """The pid of a process that has ended (for tests: what a killed run's pid is now)."""
    process = subprocess.Popen(["true"])  # noqa: S607 - coreutils, no input
    process.wait()
    return process.pid


def left(name: str, error: psycopg.Error) -> str:
    """How a sweep names an orphan it could not drop: the name, and the error's first line."""
    return f"{name} (left: {str(error).splitlines()[0]})"


def drop_orphan_roles(server: Server) -> list[str]:
    """Drop the login roles of runs whose process is gone from server (on this machine only);
    return their names. One that still owns something or holds a privilege is left, for a
    person to look at, and named with the error. On Citus, call it for each node: a DROP ROLE
    reaches the workers only from a database where Citus made the role, and that database is
    gone."""
    if not is_local_host(server.host):
        return []
    dropped = []
    with server.connect("postgres", autocommit=True) as conn:
        for (name,) in conn.execute(_LOGIN_ROLES_THAT_EXPIRE_WITHIN_A_DAY).fetchall():
            named = _RUN_ROLE.fullmatch(name)
            if named is None or process_exists(int(named["pid"])):
                continue
            try:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
            except psycopg.Error as error:  # it owns something, or holds a privilege
                dropped.append(left(name, error))
                continue
            dropped.append(name)
    return dropped
