"""What a copy of the migrated template costs the test suite, in the server's default tablespace
and in one on the RAM disk (tests/ram_tablespace.py), measured side by side.

    .venv/bin/python scripts/clone_cost.py [SUPERUSER_URL] [--rounds N]

SUPERUSER_URL defaults to $TODO_RLS_TEST_SERVER_URL, else postgresql://postgres@127.0.0.1:5432.
It makes a migrated template (as the suite does), then, N rounds in turns, copies it and drops
the copy in each place, and prints the medians and their ratio. It leaves the server as it found
it: the template, the copies, the tablespace and its folder are dropped, also on failure.
"""

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the suite's helper
from todo_rls import migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.testing.database import SERVER_URL_ENV, Server

import ram_tablespace

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def timed(conn: psycopg.Connection[Any], statement: sql.Composed) -> float:
    start = time.perf_counter()
    conn.execute(statement)
    return time.perf_counter() - start


def measure(server: Server, template: str, rounds: int) -> dict[str, list[float]]:
    """Seconds per copy and per drop, for each place, over rounds taken in turns."""
    copy = f"{template}_copy"
    places = {"default": replace(server, tablespace="pg_default"), "RAM disk": server}
    drop = sql.SQL("drop database {}").format(sql.Identifier(copy))
    times: dict[str, list[float]] = {}
    with server.connect("postgres", autocommit=True) as conn:
        for _ in range(rounds):
            for place, placed in places.items():
                create = placed.create_database_sql(copy, template=template)
                times.setdefault(f"copy, {place}", []).append(timed(conn, create))
                times.setdefault(f"drop, {place}", []).append(timed(conn, drop))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get(SERVER_URL_ENV, DEFAULT_URL))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    server = Server.from_url(args.url)
    tablespace = ram_tablespace.make(server)
    if tablespace is None:
        print("no RAM-disk tablespace here (see tests/ram_tablespace.py): nothing to compare")
        return 2
    try:
        placed = replace(server, tablespace=tablespace.name)
        with placed.scratch_database() as template:  # in the tablespace: copies inherit it
            with placed.connect(template, autocommit=True) as conn:
                conn.execute(BETTER_AUTH_USER_DDL)
            migrate.upgrade(placed.url(template).render_as_string(hide_password=False))
            times = measure(placed, template, args.rounds)
    finally:
        ram_tablespace.drop(server, tablespace)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:<16} median {median * 1000:7.1f} ms over {len(times[name])}")
    for step in ("copy", "drop"):
        ratio = medians[f"{step}, default"] / medians[f"{step}, RAM disk"]
        print(f"{step}: the default tablespace costs {ratio:.1f}x the RAM disk's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
