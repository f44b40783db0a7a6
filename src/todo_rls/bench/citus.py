"""`todo-rls bench-citus`: the data-access layer's routed patterns on a Citus cluster against a
single PostgreSQL server, in the same run, and what a query that fans out to every shard costs.

Both sides get the same fresh database (the users table, todo-rls's migrations, a run key, a
login role of the run, the same rows); each pattern runs through todo_rls.scoped_session as
that login, the two sides interleaved (bench.timing), one pooled connection each. Everything
the run makes (databases on every node, roles, the key) is dropped at the end.
"""

import argparse
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from psycopg import sql
from sqlalchemy import Engine, text

from todo_rls import chat, tasks
from todo_rls.bench.setup import require_local_server
from todo_rls.bench.timing import Timing, interleaved
from todo_rls.engine import EngineSettings, create_engine, database_url
from todo_rls.identity import SigningKey
from todo_rls.session import scoped_session
from todo_rls.testing.citus import CitusCluster
from todo_rls.testing.database import LoginRole, Server, migrate_database

BARE = "single node, bare policies"
# The policies as revision eb55c0c808a9 rewrites them on Citus, applied to a single node.
_BARE_POLICIES = "".join(
    f"alter policy {table}_select on public.{table} using (user_id = todo_rls.current_user_id());"
    f"alter policy {table}_update on public.{table} using (user_id = todo_rls.current_user_id())"
    " with check (user_id = todo_rls.current_user_id());"
    f"alter policy {table}_delete on public.{table} using (user_id = todo_rls.current_user_id());"
    f"alter policy {table}_insert on public.{table}"
    " with check (user_id = todo_rls.current_user_id());"
    for table in ("task", "conversation", "message", "user_preference", "audit_event")
)
CITUS_URL_ENV = "TODO_RLS_CITUS_URL"
SINGLE_URL_ENV = "TODO_RLS_TEST_SERVER_URL"
MESSAGES_EACH = 10

# The rows every user gets: tasks, one conversation with messages. generate_series keeps it to
# one statement per table on both sides (INSERT ... SELECT is pushed down on Citus).
_FILL = [
    """insert into public."user" (id, name, email, "emailVerified")
       select 'bench' || pg_catalog.lpad(g::text, 27, '0'), 'u' || g,
              'u' || g || '@example.test', true
       from pg_catalog.generate_series(1, %(users)s) g""",
    """insert into public.task (user_id, title, completed)
       select u.id, 'task ' || g, g %% 3 = 0
       from public."user" u, pg_catalog.generate_series(1, %(tasks)s) g""",
    """insert into public.conversation (user_id, title)
       select u.id, 'chat' from public."user" u""",
    """insert into public.message (conversation_id, user_id, role, content)
       select c.id, c.user_id, 'user', 'message ' || g
       from public.conversation c, pg_catalog.generate_series(1, %(messages)s) g""",
]


@dataclass
class Side:
    """One side of the comparison: a migrated, filled database and a scoped engine on it."""

    name: str
    engine: Engine
    key: SigningKey
    users: list[str]
    task_of: dict[str, str]
    conversation_of: dict[str, str]


@dataclass(frozen=True)
class Row:
    """One pattern's figures on each side, in milliseconds."""

    pattern: str
    single_median_ms: float
    single_p95_ms: float
    citus_median_ms: float
    citus_p95_ms: float
    # A single node with the policies in the form Citus needs (no sub-select): what that form
    # would cost where the InitPlan form is possible.
    bare_median_ms: float
    bare_p95_ms: float

    @property
    def added_ms(self) -> float:
        return self.citus_median_ms - self.single_median_ms


Action = Callable[[Side, int], object]


def _in_session(side: Side, i: int, work: Callable[[Any, str], object], commit: bool) -> None:
    user = side.users[i % len(side.users)]
    with scoped_session(side.engine, user, signing_key=side.key) as session:
        work(session, user)
        if commit:
            session.commit()
        else:
            session.rollback()  # writes leave the data as it was, on both sides alike


def _pattern(work: Callable[[Any, Side, str], object], commit: bool = True) -> Action:
    return lambda side, i: _in_session(side, i, lambda s, u: work(s, side, u), commit)


PATTERNS: dict[str, Action] = {
    "tasks.list_page": _pattern(lambda s, side, u: tasks.list_page(s)),
    "tasks.get": _pattern(lambda s, side, u: tasks.get(s, side.task_of[u])),
    "tasks.count_open": _pattern(lambda s, side, u: tasks.count_open(s)),
    "tasks.create": _pattern(lambda s, side, u: tasks.create(s, "new"), commit=False),
    "tasks.update": _pattern(
        lambda s, side, u: tasks.update(s, side.task_of[u], title="renamed"), commit=False
    ),
    "chat.list_messages": _pattern(
        lambda s, side, u: chat.list_messages(s, side.conversation_of[u])
    ),
    # No user_id filter: the policies alone narrow it, so Citus asks every shard.
    "fan-out: count(*) from task": _pattern(
        lambda s, side, u: s.connection().execute(text("select count(*) from task")).scalar_one()
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `todo-rls bench-citus`."""
    parser.add_argument(
        "--citus-url",
        default=os.environ.get(CITUS_URL_ENV),
        help=f"superuser URL of a Citus coordinator's database with the workers registered "
        f"(default: ${CITUS_URL_ENV})",
    )
    parser.add_argument(
        "--single-url",
        default=os.environ.get(SINGLE_URL_ENV),
        help=f"superuser URL of a single PostgreSQL server (default: ${SINGLE_URL_ENV})",
    )
    parser.add_argument("--users", type=int, default=200, help="users (default: 200)")
    parser.add_argument("--tasks", type=int, default=50, help="tasks per user (default: 50)")
    parser.add_argument(
        "--iterations", type=int, default=200, help="timed runs per pattern and side"
    )
    parser.add_argument(
        "--shard-count", type=int, default=32, help="shards per table (default: 32, Citus's)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--allow-remote-server",
        action="store_true",
        help="allow servers that are not this machine (the run makes databases and a role)",
    )


def run(args: argparse.Namespace) -> int:
    """`todo-rls bench-citus`: 0 after printing the figures, 2 if it cannot run."""
    if not args.citus_url or not args.single_url:
        print(
            f"todo-rls: error: bench-citus needs --citus-url (or ${CITUS_URL_ENV}) and "
            f"--single-url (or ${SINGLE_URL_ENV})",
            file=sys.stderr,
        )
        return 2
    for url in (args.citus_url, args.single_url):
        require_local_server(database_url(url), args.allow_remote_server)
    rows = measure(args)
    if args.json:
        report = [asdict(row) | {"added_ms": round(row.added_ms, 3)} for row in rows]
        print(json.dumps({"shard_count": args.shard_count, "patterns": report}, indent=2))
    else:
        print(render(rows, args))
    return 0


def measure(args: argparse.Namespace) -> list[Row]:
    """Both sides set up, every pattern timed interleaved, everything dropped."""
    key = SigningKey(os.urandom(32))
    login = LoginRole.for_this_run()
    single = Server.from_url(args.single_url)
    cluster = CitusCluster.of(Server.from_url(args.citus_url))
    with ExitStack() as stack:
        sides = [
            stack.enter_context(_side("single node", single, None, key, login, args)),
            stack.enter_context(_side("citus", cluster.coordinator, cluster, key, login, args)),
            stack.enter_context(_side(BARE, single, None, key, login, args)),
        ]
        rows = []
        for name, action in PATTERNS.items():
            on_each: list[Callable[[int], object]] = [partial(_on, action, side) for side in sides]
            single_timing, citus_timing, bare_timing = interleaved(on_each, args.iterations)
            rows.append(_row(name, single_timing, citus_timing, bare_timing))
        return rows


def _on(action: Action, side: Side, i: int) -> object:
    return action(side, i)


def _row(name: str, single: Timing, citus: Timing, bare: Timing) -> Row:
    return Row(
        name,
        single.median_ms,
        single.p95_ms,
        citus.median_ms,
        citus.p95_ms,
        bare.median_ms,
        bare.p95_ms,
    )


@contextmanager
def _side(
    name: str,
    server: Server,
    cluster: CitusCluster | None,
    key: SigningKey,
    login: LoginRole,
    args: argparse.Namespace,
) -> Iterator[Side]:
    with _database(server, cluster, args.shard_count) as dbname:
        try:
            migrate_database(
                server, dbname, login_role=login.name, password=login.password, signing_key=key
            )
            with server.connect(dbname, autocommit=True) as conn:
                if name == BARE:
                    conn.execute(_BARE_POLICIES)
                params = {"users": args.users, "tasks": args.tasks, "messages": MESSAGES_EACH}
                for statement in _FILL:
                    conn.execute(statement, params)
                conn.execute("analyze")
                task_of = dict(
                    conn.execute("select distinct on (user_id) user_id, id::text from task")
                )
                conversation_of = dict(conn.execute("select user_id, id::text from conversation"))
            url = server.url(dbname, user=login.name, password=login.password)
            engine = create_engine(
                url.render_as_string(hide_password=False),
                EngineSettings(pool_size=1, max_overflow=0, pre_ping=False),
            )
            try:
                yield Side(name, engine, key, sorted(task_of), task_of, conversation_of)
            finally:
                engine.dispose()
        finally:
            with server.connect(dbname, autocommit=True) as conn:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(login.name)))


@contextmanager
def _database(server: Server, cluster: CitusCluster | None, shard_count: int) -> Iterator[str]:
    if cluster is not None:
        with cluster.database(shard_count=shard_count) as name:
            yield name
        return
    name = f"todo_rls_bench_citus_{os.getpid()}_{secrets.token_hex(3)}"
    with server.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with server.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def render(rows: list[Row], args: argparse.Namespace) -> str:
    """The figures as a table, with what was run."""
    lines = [
        f"{args.users} users x {args.tasks} tasks, {MESSAGES_EACH} messages each; "
        f"{args.shard_count} shards per table; {args.iterations} runs per pattern and side "
        "(scoped_session as a login of todo_app, one transaction each, median / p95 in ms)",
        "",
        f"{'pattern':30} {'single node':>16} {'citus':>16} {'added':>7}"
        f" {'single, bare policies':>22}",
    ]
    for row in rows:
        lines.append(
            f"{row.pattern:30} {row.single_median_ms:7.2f} /{row.single_p95_ms:7.2f} "
            f"{row.citus_median_ms:7.2f} /{row.citus_p95_ms:7.2f} {row.added_ms:+7.2f}"
            f" {row.bare_median_ms:13.2f} /{row.bare_p95_ms:7.2f}"
        )
    return "\n".join(lines)
