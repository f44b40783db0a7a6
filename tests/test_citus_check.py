"""`todo-rls check` on a Citus coordinator: clean as migrated, and each Citus hole found."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from todo_rls.check import audit, connect
from todo_rls.check.findings import Finding
from todo_rls.check.rules_citus import citus_tables, exemptions
from todo_rls.check.rules_objects import view_as_owner
from todo_rls.identity import SigningKey

from fix_citus import CITUS_LOGIN_PASSWORD, CitusApp
from fix_db import create_user

pytestmark = pytest.mark.citus

OWNED_TABLES = {
    "public.task",
    "public.conversation",
    "public.message",
    "public.user_preference",
    "public.audit_event",
}


@pytest.fixture(scope="module", autouse=True)
def _quiet_workers(citus_app: CitusApp) -> Iterator[None]:
    """The module's database deployed as docs/citus.md says: track_activities off (CIT004)."""
    with worker_activity(citus_app, tracked=False):
        yield


def app_url(app: CitusApp) -> str:
    """The coordinator URL of the database as the app's login role: the check needs no more."""
    url = app.cluster.coordinator.url(app.dbname, user=app.login, password=CITUS_LOGIN_PASSWORD)
    return url.render_as_string(hide_password=False)


def findings(app: CitusApp) -> list[Finding]:
    """Every finding of `todo-rls check` on the app's database, run as its login role."""
    with connect(app_url(app)) as conn:
        _, found = audit(conn)
    return found


def test_each_tables_placements_are_read_once_per_check(
    citus_app: CitusApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read of run_command_on_placements opens a connection to every placement (a backend
    # and a TLS handshake on a worker): CIT001 and CIT002 share one read per table.
    with connect(app_url(citus_app)) as conn:
        reads: list[int] = []
        execute = conn.execute

        def counting(query: Any, params: Any = None, **kwargs: Any) -> Any:
            if "run_command_on_placements" in str(query):
                reads.append(params["table"])
            return execute(query, params, **kwargs)

        monkeypatch.setattr(conn, "execute", counting)
        ctx, found = audit(conn)
        tables = citus_tables(ctx)
    assert found == []
    assert len(tables) == len(OWNED_TABLES)  # positive control: there were placements to read
    assert sorted(reads) == sorted(table.oid for table in tables)


def test_migrated_citus_database_has_no_findings(citus_app: CitusApp) -> None:
    with connect(app_url(citus_app)) as conn:
        ctx, found = audit(conn)
        # Positive controls: the owned tables were checked, as Citus tables, and Citus's own
        # views would have been reported by VIEW001 without their exemption.
        assert {table.name for table in ctx.tables} == OWNED_TABLES
        assert {(t.name, t.kind, t.column) for t in citus_tables(ctx)} == {
            (name, "distributed", "user_id") for name in OWNED_TABLES
        }
        views = {hit.object for hit in view_as_owner(ctx)}
        assert {"public.citus_tables", "public.citus_schemas"} <= views
        assert {("VIEW001", view) for view in views} <= exemptions(ctx)
    assert found == []


def placement(app: CitusApp, table: str) -> tuple[psycopg.Connection[Any], str]:
    """A superuser connection to the worker holding table's first shard, and the shard's name."""
    with app.admin() as conn:
        row = conn.execute(
            "select pg_catalog.shard_name(%s::regclass, s.shardid), n.nodename, n.nodeport"
            " from pg_catalog.pg_dist_shard s"
            " join pg_catalog.pg_dist_placement p using (shardid)"
            " join pg_catalog.pg_dist_node n using (groupid)"
            " where s.logicalrelid = %s::regclass order by s.shardid limit 1",
            (table, table),
        ).fetchone()
    assert row is not None
    shard, host, port = row
    return app.cluster.node(host, port).connect(app.dbname, autocommit=True), shard


@contextmanager
def on_a_shard(app: CitusApp, change: str, undo: str) -> Iterator[str]:
    """change (a format string taking the shard's name) applied on one shard of public.task,
    directly on its worker; undone after. Yields the shard's name."""
    conn, shard = placement(app, "public.task")
    with conn:
        name = sql.SQL(shard)  # shard_name() quotes it as SQL needs
        conn.execute(sql.SQL(change).format(name))
        try:
            yield shard
        finally:
            conn.execute(sql.SQL(undo).format(name))


SHARD_CHANGES = {
    "no force": (
        "alter table {} no force row level security",
        "alter table {} force row level security",
        "CIT001",
    ),
    "rls off": (
        "alter table {} disable row level security",
        "alter table {} enable row level security",
        "CIT001",
    ),
    "policy widened": (
        "alter policy task_select on {} using (true)",
        "alter policy task_select on {} using (user_id = todo_rls.current_user_id())",
        "CIT002",
    ),
    "policy dropped": (
        "drop policy task_delete on {}",
        "create policy task_delete on {} for delete to todo_app"
        " using (user_id = todo_rls.current_user_id())",
        "CIT002",
    ),
}


@pytest.mark.parametrize(("change", "undo", "rule"), SHARD_CHANGES.values(), ids=SHARD_CHANGES)
def test_a_weakened_shard_placement_is_reported(
    citus_app: CitusApp, change: str, undo: str, rule: str
) -> None:
    assert findings(citus_app) == []  # positive control
    with on_a_shard(citus_app, change, undo) as shard:
        found = findings(citus_app)
        assert [(f.object, f.rule) for f in found] == [("public.task", rule)], found
        assert shard.split(".")[-1].split("_")[-1] in found[0].message  # names the shard
    assert findings(citus_app) == []  # undone: clean again


NOTE_TABLE = """
create table public.scratch_note (id uuid not null default gen_random_uuid(), user_id text not null,
  primary key (user_id, id));
alter table public.scratch_note alter column user_id set statistics 0;
alter table public.scratch_note enable row level security;
alter table public.scratch_note force row level security;
create policy scratch_note_select on public.scratch_note for select to todo_app using (user_id = todo_rls.current_user_id());
create policy scratch_note_insert on public.scratch_note for insert to todo_app with check (user_id = todo_rls.current_user_id());
create policy scratch_note_update on public.scratch_note for update to todo_app using (user_id = todo_rls.current_user_id()) with check (user_id = todo_rls.current_user_id());
create policy scratch_note_delete on public.scratch_note for delete to todo_app using (user_id = todo_rls.current_user_id());
grant select, insert, update, delete on public.scratch_note to todo_app;
"""  # noqa: E501 - one policy a line


@pytest.fixture
def note_table(citus_app: CitusApp) -> Iterator[psycopg.Connection[Any]]:
    """public.scratch_note: an owned table with the four bare-form policies, not distributed yet."""
    with citus_app.admin() as conn:
        conn.execute(NOTE_TABLE)
        try:
            yield conn
        finally:
            conn.execute("drop table public.scratch_note")


def test_an_owned_table_distributed_on_another_column_is_reported(
    citus_app: CitusApp, note_table: psycopg.Connection[Any]
) -> None:
    # Plain on the coordinator, its bare policies get the single-node warning (POL005 is
    # exempt on Citus tables only, where the sub-select is refused).
    assert {(f.object, f.rule) for f in findings(citus_app)} == {("public.scratch_note", "POL005")}
    note_table.execute("select create_distributed_table('public.scratch_note', 'id')")
    found = findings(citus_app)
    assert [(f.object, f.rule) for f in found] == [("public.scratch_note", "CIT003")], found
    assert "distributed on id, not user_id" in found[0].message


def test_an_owned_table_distributed_on_user_id_is_clean(
    citus_app: CitusApp, note_table: psycopg.Connection[Any]
) -> None:
    note_table.execute("alter table public.scratch_note drop constraint scratch_note_pkey")
    note_table.execute("alter table public.scratch_note add primary key (user_id, id)")
    note_table.execute("select create_distributed_table('public.scratch_note', 'user_id')")
    assert findings(citus_app) == []


QUIET = sql.SQL("alter database {} set track_activities = off")
LOUD = sql.SQL("alter database {} reset track_activities")


@contextmanager
def worker_activity(app: CitusApp, tracked: bool) -> Iterator[None]:
    """The database's track_activities default (propagated to every node), restored after."""
    name = sql.Identifier(app.dbname)
    with app.cluster.coordinator.connect("postgres", autocommit=True) as conn:
        conn.execute((LOUD if tracked else QUIET).format(name))
        try:
            yield
        finally:
            conn.execute((QUIET if tracked else LOUD).format(name))


def signatures_seen_on_workers(app: CitusApp, user_id: str) -> bool:
    """Whether another session of the app's login reads a scoped session's signature on the
    workers. Deterministic: the scope is set after a distributed query opened the worker
    connections, so its SET LOCAL stays their last query text (through the wrapper, it rides in
    Citus's BEGIN and is visible only until the first shard query: measured in docs/citus.md)."""
    key = SigningKey.from_env()
    signature = key.sign(user_id, 60)
    with app.connect() as scoped, app.connect(autocommit=True) as other:
        scoped.execute("select count(*) from task").fetchall()
        scoped.execute(
            "select todo_rls.begin_scope(%s, %s, 'public', null, false)", (user_id, signature)
        )
        texts = other.execute(
            "select result from pg_catalog.run_command_on_workers("
            "$$select coalesce(string_agg(query, ' '), '') from pg_stat_activity"
            " where usename = current_user and pid <> pg_backend_pid()$$)"
        ).fetchall()
        scoped.rollback()
    return any(signature in text for (text,) in texts)


def test_worker_query_texts_of_the_app_login_are_reported(citus_app: CitusApp) -> None:
    with citus_app.admin() as admin:
        user_id = create_user(admin)
    with worker_activity(citus_app, tracked=True):
        assert signatures_seen_on_workers(citus_app, user_id)  # the hole CIT004 is about
        found = [f for f in findings(citus_app) if f.rule == "CIT004"]
        assert {f.object for f in found} >= {f"role {citus_app.login}"}, found
        assert all(f"{h}:{p}" in found[0].message for h, p in citus_app.cluster.workers)
        assert found[0].fix.startswith(f'alter database "{citus_app.dbname}" set track_')
    # Fixed as the finding says (the module's default): not reported, and not readable.
    assert not [f for f in findings(citus_app) if f.rule == "CIT004"]
    assert not signatures_seen_on_workers(citus_app, user_id)
