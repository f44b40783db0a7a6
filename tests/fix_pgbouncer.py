"""A real PgBouncer in transaction mode in front of the test server, as Neon's pooled URL is.

One PgBouncer per test session, on a free loopback port, with a small server pool so many
clients share few server connections. Its ``*`` database entry routes every database name to
the test server, so the per-test copies of the migrated database work through it unchanged.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import URL

from fix_db import APP_LOGIN, LOGIN_PASSWORD
from fix_server import PgServer

PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
SERVER_POOL_SIZE = 3  # server connections per (database, user): far fewer than the clients
# PgBouncer refuses to run as root; these users exist on Debian with PostgreSQL, or everywhere.
UNPRIVILEGED_USERS = ("postgres", "nobody")
STARTUP_SECONDS = 10.0


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: where it listens and how many server connections it keeps."""

    host: str
    port: int
    pool_size: int
    log: Path

    def url(self, dbname: str, user: str = APP_LOGIN, password: str = LOGIN_PASSWORD) -> str:
        """A postgresql+psycopg URL of dbname through PgBouncer (default: as the app role)."""
        url = URL.create(
            "postgresql+psycopg",
            username=user,
            password=password,
            host=self.host,
            port=self.port,
            database=dbname,
        )
        return url.render_as_string(hide_password=False)

    def conninfo(self, dbname: str, user: str = APP_LOGIN) -> str:
        """A libpq conninfo of dbname through PgBouncer, for raw psycopg connections."""
        return (
            f"host={self.host} port={self.port} dbname={dbname} user={user} "
            f"password={LOGIN_PASSWORD}"
        )


def find_pgbouncer() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    return found or next((p for p in PGBOUNCER_PATHS if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(server: PgServer, port: int, auth_file: Path) -> str:
    # A host starting with "/" is a Unix-socket folder (the embedded server): PgBouncer takes
    # it as is. unix_socket_dir is empty so PgBouncer itself listens on TCP only.
    return f"""\
[databases]
* = host={server.host} port={server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
pidfile =
logfile =
auth_type = md5
auth_file = {auth_file}
pool_mode = transaction
default_pool_size = {SERVER_POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 400
max_db_connections = 0
server_round_robin = 0
ignore_startup_parameters = extra_float_digits
"""


def _run_as(server: PgServer) -> pwd.struct_passwd | None:
    """The unprivileged user to run PgBouncer as when the tests run as root, else None."""
    if os.geteuid() != 0:
        return None
    if server.host.startswith("/"):
        # The embedded server's socket is in its data folder (0700), which as root belongs to
        # the OS user the server runs as: only that user may connect through it.
        owner = Path(server.host).stat().st_uid
        if owner != 0:
            return pwd.getpwuid(owner)
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail(f"running as root and none of the users {UNPRIVILEGED_USERS} exists")


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pgbouncer exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(
        f"pgbouncer did not listen on port {port} in {STARTUP_SECONDS} s:\n{log.read_text()}"
    )


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """A PgBouncer (pool_mode = transaction) in front of the test server, for the session."""
    executable = find_pgbouncer()
    if executable is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    user = _run_as(pg_server)
    workdir = Path(tempfile.mkdtemp(prefix="todo-rls-pgbouncer-"))
    port = _free_port()
    auth_file, config, log = workdir / "userlist.txt", workdir / "pgbouncer.ini", workdir / "log"
    # md5 with the password in plain text: PgBouncer checks clients with it and logs in to the
    # server with it too (so the server may ask for md5 or SCRAM).
    auth_file.write_text(f'"{APP_LOGIN}" "{LOGIN_PASSWORD}"\n')
    config.write_text(_config(pg_server, port, auth_file))
    if user is not None:
        for path in (workdir, auth_file, config):
            os.chown(path, user.pw_uid, user.pw_gid)
    with log.open("wb") as log_stream:
        process = subprocess.Popen(  # noqa: S603 - a fixed executable and our own config
            [executable, str(config)],
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
        )
    try:
        _wait_until_listening(process, port, log)
        yield PgBouncer("127.0.0.1", port, SERVER_POOL_SIZE, log)
    finally:
        process.terminate()  # SIGTERM: immediate shutdown, closing every connection
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
