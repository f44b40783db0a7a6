"""The migrations on a Citus coordinator distribute the owned tables; on PostgreSQL they do not."""

import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine, pool, text

import todo_rls
from todo_rls import MigrationPreconditionError, keys, migrate
from todo_rls.better_auth import BETTER_AUTH_USER_DDL
from todo_rls.identity import SigningKey
from todo_rls.testing.citus import CitusCluster
from todo_rls.testing.database import ensure_login_role

from catalog import Snapshot, query_one, snapshot
from fix_citus import CITUS_LOGIN_PASSWORD, CitusApp
from fix_db import create_user
from fix_server import PgServer

OWNED_TABLES = ("task", "conversation", "message", "user_preference", "audit_event")
COLOCATION_REVISION = "f442b80e6153"
CITUS_REVISION = "eb55c0c808a9"
TODO_RLS = Path(sys.executable).with_name("todo-rls")
# Better Auth's session table references "user" (RLS-FACTS); Citus must cope with it.
BETTER_AUTH_SESSION_DDL = """
create table "session" ("id" text not null primary key, "expiresAt" timestamptz not null,
  "token" text not null unique, "userId" text not null references "user" ("id") on delete cascade)
"""


def _citus_revision() -> Any:
    """The distribution revision's module, for its predicate constants."""
    script = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(CITUS_REVISION)
    assert script is not None
    return script.module


REVISION = _citus_revision()


def citus_tables(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str, int]]:
    """Table name -> (Citus table type, distribution column, colocation id), from the catalog."""
    rows = conn.execute(
        "select logicalrelid::text,"
        " case when partmethod = 'h' then 'distributed' when repmodel = 't' then 'reference'"
        " else 'local' end,"
        " coalesce(pg_catalog.column_to_column_name(logicalrelid, partkey), ''), colocationid"
        " from pg_catalog.pg_dist_partition"
    ).fetchall()
    return {name: (kind, column, colocation) for name, kind, column, colocation in rows}


def owned_policies(conn: psycopg.Connection[Any]) -> set[tuple[str, str, str | None, str | None]]:
    """(table, policy, USING, WITH CHECK) of the owned tables, as the coordinator has them."""
    rows = conn.execute(
        "select tablename::text, policyname::text, qual, with_check from pg_catalog.pg_policies"
        " where schemaname = 'public' and tablename = any(%s)",
        (list(OWNED_TABLES),),
    ).fetchall()
    return {tuple(row) for row in rows}


def assert_distributed(conn: psycopg.Connection[Any]) -> None:
    """ "user" a reference table; the owned tables hash-distributed by user_id, co-located."""
    tables = citus_tables(conn)
    assert tables['"user"'][0] == "reference"
    # The verifier's keys are on every node, where the policies run it.
    assert tables["todo_rls.signing_key"][0] == "reference"
    owned = {name: tables[name] for name in OWNED_TABLES}
    assert {kind for kind, _, _ in owned.values()} == {"distributed"}, tables
    assert {column for _, column, _ in owned.values()} == {"user_id"}, tables
    assert len({colocation for _, _, colocation in owned.values()}) == 1, tables
    # The policies are in the form Citus accepts: no sub-select, the revision's predicate.
    policies = owned_policies(conn)
    assert len(policies) == 4 * len(OWNED_TABLES)
    assert all("select" not in (qual or "") + (check or "") for _, _, qual, check in policies)
    assert all(
        (qual or check) == "(user_id = todo_rls.current_user_id())"
        for _, _, qual, check in policies
    ), policies


@pytest.mark.citus
def test_todo_rls_migrate_on_the_coordinator_distributes_by_user_id(
    citus_cluster: CitusCluster, citus_database: str
) -> None:
    with citus_cluster.coordinator.connect(citus_database, autocommit=True) as conn:
        conn.execute(BETTER_AUTH_USER_DDL)
        conn.execute(BETTER_AUTH_SESSION_DDL)
        url = citus_cluster.coordinator.url(citus_database).render_as_string(hide_password=False)
        done = subprocess.run(  # noqa: S603 - the installed console script, our own arguments
            [str(TODO_RLS), "migrate", "--url", url],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert_distributed(conn)
        tables = citus_tables(conn)
        # Better Auth's session references "user": Citus made it a coordinator-local table.
        assert tables["session"][0] == "local"
        # Every shard of the group is on a worker, and each worker holds some.
        placements = conn.execute(
            "select n.nodeport, count(*) from pg_catalog.pg_dist_shard s"
            " join pg_catalog.pg_dist_placement p using (shardid)"
            " join pg_catalog.pg_dist_node n using (groupid)"
            " where s.logicalrelid = 'public.task'::regclass group by 1 order by 1"
        ).fetchall()
        assert [port for port, _ in placements] == [port for _, port in citus_cluster.workers]
        # Control: a policy that lost its owner check fails the assertion above.
        conn.execute("alter policy task_select on public.task using (user_id is not null)")
        with pytest.raises(AssertionError):
            assert_distributed(conn)


def insert_rows(conn: psycopg.Connection[Any], user_id: str) -> None:
    """One row in each owned table for user_id (as the superuser)."""
    conn.execute("insert into task (user_id, title) values (%s, 'kept')", (user_id,))
    conversation = query_one(
        conn, "insert into conversation (user_id) values (%s) returning id", user_id
    )
    conn.execute(
        "insert into message (conversation_id, user_id, role, content)"
        " values (%s, %s, 'user', 'kept')",
        (conversation, user_id),
    )
    conn.execute("insert into user_preference (user_id, theme) values (%s, 'dark')", (user_id,))
    # The superuser's writes are no user's actions, so the trigger records none: one by hand.
    conn.execute(
        "insert into audit_event (user_id, action, table_name, row_id)"
        " values (%s, 'insert', 'conversation', %s)",
        (user_id, conversation),
    )


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows per owned table."""
    return {
        table: query_one(conn, f"select count(*) from public.{table}") for table in OWNED_TABLES
    }


def comparable(snap: Snapshot) -> Snapshot:
    """A snapshot without Citus's own views in public, CHECK texts without parentheses.

    undistribute_table re-creates each table from deparsed DDL, which flattens nested ANDs:
    ((a AND b) AND c) comes back as (a AND b AND c), the same constraint.
    """
    result = {
        topic: [row for row in rows if not str(row[0]).startswith("citus_")]
        for topic, rows in snap.items()
    }
    result["constraints"] = [
        (table, name, definition.replace("(", "").replace(")", ""))
        if definition.startswith("CHECK")
        else (table, name, definition)
        for table, name, definition in result["constraints"]
    ]
    return result


@pytest.mark.citus
def test_downgrade_undistributes_and_upgrade_distributes_again(
    citus_cluster: CitusCluster, citus_database: str
) -> None:
    url = citus_cluster.coordinator.url(citus_database).render_as_string(hide_password=False)
    with citus_cluster.coordinator.connect(citus_database, autocommit=True) as conn:
        conn.execute(BETTER_AUTH_USER_DDL)
        migrate.upgrade(url, COLOCATION_REVISION)
        plain = snapshot(conn)
        assert citus_tables(conn) == {}
        alice, bob = create_user(conn), create_user(conn)
        for user_id in (alice, bob):
            insert_rows(conn, user_id)
        counts = row_counts(conn)
        assert counts == dict.fromkeys(OWNED_TABLES, 2)

        migrate.upgrade(url)  # populated tables: Citus copies their rows into the shards
        assert_distributed(conn)
        assert row_counts(conn) == counts

        migrate.downgrade(url, COLOCATION_REVISION)
        assert citus_tables(conn) == {}, "downgrade left Citus tables"
        assert row_counts(conn) == counts
        # The same schema as before the upgrade: keys, policies (sub-select form), grants,
        # triggers, indexes and FORCE, compared topic by topic.
        assert comparable(snapshot(conn)) == comparable(plain)

        migrate.downgrade(url, "base")
        assert query_one(conn, "select pg_catalog.to_regclass('public.task')") is None
        assert query_one(conn, 'select count(*) from "user"') == 2

        migrate.upgrade(url)
        assert_distributed(conn)


@pytest.mark.citus
def test_migrate_on_citus_without_nodes_names_the_fix(citus_cluster: CitusCluster) -> None:
    # A deployment that created the extension on the coordinator and registered no node.
    with (
        citus_cluster.database(citus=False) as dbname,
        citus_cluster.coordinator.connect(dbname, autocommit=True) as conn,
    ):
        conn.execute("create extension citus")
        assert query_one(conn, "select count(*) from pg_catalog.pg_dist_node") == 0
        conn.execute(BETTER_AUTH_USER_DDL)
        url = citus_cluster.coordinator.url(dbname).render_as_string(hide_password=False)
        with pytest.raises(MigrationPreconditionError, match="citus_add_node"):
            migrate.upgrade(url)
        # One transaction: nothing of ours was left behind.
        assert query_one(conn, "select pg_catalog.to_regclass('public.task')") is None


def role_locks(conn: psycopg.Connection[Any], *databases: str) -> set[tuple[str, str, bool]]:
    """(database, role, granted) of every lock on a role (a shared object, seen from any
    database of the server) that a backend connected to one of databases holds or awaits."""
    rows = conn.execute(
        "select a.datname::text, l.objid::regrole::text, l.granted"
        " from pg_catalog.pg_locks l join pg_catalog.pg_stat_activity a using (pid)"
        " where l.locktype = 'object' and l.classid = 'pg_catalog.pg_authid'::regclass"
        " and a.datname = any(%s)",
        (list(databases),),
    ).fetchall()
    return {tuple(row) for row in rows}


@pytest.mark.citus
def test_a_migration_waits_while_another_database_of_the_cluster_migrates(
    citus_cluster: CitusCluster,
    citus_database: str,
    citus_app: CitusApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two databases migrating at once failed with "tuple concurrently updated": both applied the
    # cluster's roles again on a worker. Here the other database's migration is paused where it
    # holds its lock: serialize_on_citus in a transaction left open on citus_app's database.
    coordinator = citus_cluster.coordinator
    url = coordinator.url(citus_database).render_as_string(hide_password=False)
    other_url = coordinator.url(citus_app.dbname).render_as_string(hide_password=False)
    other_engine = create_engine(other_url, poolclass=pool.NullPool)
    both = (citus_database, citus_app.dbname)
    with (
        coordinator.connect(citus_database, autocommit=True) as conn,
        other_engine.connect() as other,
    ):
        conn.execute(BETTER_AUTH_USER_DDL)
        migrate.serialize_on_citus(other)
        assert role_locks(conn, *both) == {(citus_app.dbname, "todo_app", True)}

        # A short wait runs out, naming the cause, and changes nothing.
        monkeypatch.setenv(migrate.CLUSTER_WAIT_ENV, "200ms")
        with pytest.raises(MigrationPreconditionError, match="still migrating"):
            migrate.upgrade(url)
        assert query_one(conn, "select pg_catalog.to_regclass('public.task')") is None

        # A long one waits on role todo_app until the other commits, then migrates.
        monkeypatch.setenv(migrate.CLUSTER_WAIT_ENV, "60s")
        with ThreadPoolExecutor(max_workers=1) as runner:
            migrating = runner.submit(migrate.upgrade, url)
            deadline = time.monotonic() + 30
            while (citus_database, "todo_app", False) not in role_locks(conn, *both):
                assert not migrating.done(), migrating.exception()
                assert time.monotonic() < deadline, role_locks(conn, *both)
                time.sleep(0.05)
            other.rollback()
            migrating.result(timeout=120)
        assert_distributed(conn)
    other_engine.dispose()


@pytest.mark.citus
def test_two_databases_of_one_cluster_migrated_at_once_both_succeed(
    citus_cluster: CitusCluster, citus_database: str
) -> None:
    # Without the lock, one of each such pair failed ("tuple concurrently updated"; 5 of 5).
    coordinator = citus_cluster.coordinator
    with citus_cluster.database() as second_database:
        databases = (citus_database, second_database)
        for name in databases:
            with coordinator.connect(name, autocommit=True) as conn:
                conn.execute(BETTER_AUTH_USER_DDL)
        runs = [
            subprocess.Popen(  # noqa: S603 - the installed console script, our own arguments
                [str(TODO_RLS), "migrate", "--url", coordinator.url(name).render_as_string(False)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in databases
        ]
        outputs = [run.communicate(timeout=300)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        for name in databases:
            with coordinator.connect(name, autocommit=True) as conn:
                assert_distributed(conn)


@pytest.mark.citus
def test_a_role_that_may_not_take_the_lock_migrates_with_a_warning(citus_app: CitusApp) -> None:
    coordinator = citus_app.cluster.coordinator
    url = coordinator.url(citus_app.dbname).render_as_string(hide_password=False)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        # todo_app has no CREATEROLE, so it may not comment on a role (or lock it that way).
        conn.execute(text("set local role todo_app"))
        with pytest.warns(UserWarning, match="not held off"):
            migrate.serialize_on_citus(conn)
        # The failed lock was a savepoint: the migration's transaction goes on.
        assert conn.execute(text("select current_user::text")).scalar() == "todo_app"
        conn.rollback()
    engine.dispose()


def test_on_postgresql_the_same_migrations_leave_plain_tables(
    pg_server: PgServer, dbname: str
) -> None:
    with pg_server.connect(dbname, autocommit=True) as conn:
        # The distribution revision ran (the database is past it, at head) and did nothing here.
        script = ScriptDirectory.from_config(migrate.alembic_config())
        head = script.get_current_head()
        assert REVISION.revision in {r.revision for r in script.iterate_revisions(head, "base")}
        assert query_one(conn, "select version_num from todo_rls_alembic_version") == head
        assert query_one(conn, "select count(*) from pg_extension where extname = 'citus'") == 0
        assert (
            query_one(conn, "select pg_catalog.to_regclass('pg_catalog.pg_dist_partition')") is None
        )
        policies = owned_policies(conn)
        assert len(policies) == 4 * len(OWNED_TABLES)
        # The single-node form: the owner check's sub-select (an InitPlan) is still there.
        assert all(
            "( SELECT todo_rls.current_user_id() AS current_user_id)" in (qual or check or "")
            for _, _, qual, check in policies
        ), policies


def test_on_postgresql_a_migration_takes_no_lock_on_a_role(
    pg_server: PgServer, dbname: str
) -> None:
    engine = create_engine(
        pg_server.url(dbname).render_as_string(hide_password=False), poolclass=pool.NullPool
    )
    with (
        engine.connect() as conn,
        pg_server.connect(dbname, autocommit=True) as observer,
    ):
        migrate.serialize_on_citus(conn)
        assert role_locks(observer, dbname) == set()
        # Control: the lock Citus would take is seen from here.
        conn.execute(text("comment on role todo_app is 'held'"))
        assert role_locks(observer, dbname) == {(dbname, "todo_app", True)}
        conn.rollback()
    engine.dispose()


@pytest.mark.citus
def test_an_existing_single_node_database_is_distributed_once_citus_is_added(
    citus_cluster: CitusCluster,
) -> None:
    login = f"todo_rls_citus_app_{os.getpid()}_{secrets.token_hex(4)}"
    key = SigningKey.from_env()
    with citus_cluster.database(citus=False) as dbname:  # on every node, no extension yet
        url = citus_cluster.coordinator.url(dbname).render_as_string(hide_password=False)
        with citus_cluster.coordinator.connect(dbname, autocommit=True) as conn:
            conn.execute(BETTER_AUTH_USER_DDL)
            migrate.upgrade(url)  # at head: the distribution revision did nothing
            keys.add(conn, key)
            alice, bob = create_user(conn), create_user(conn)
            for user_id in (alice, bob):
                insert_rows(conn, user_id)
            counts = row_counts(conn)
        citus_cluster.add_citus(dbname)
        # Already at head: step back over the distribution revision, then forward again.
        migrate.downgrade(url, COLOCATION_REVISION)
        migrate.upgrade(url)
        try:
            with citus_cluster.coordinator.connect(dbname, autocommit=True) as conn:
                assert_distributed(conn)
                assert row_counts(conn) == counts
                ensure_login_role(conn, login, CITUS_LOGIN_PASSWORD)
            app_url = citus_cluster.coordinator.url(
                dbname, user=login, password=CITUS_LOGIN_PASSWORD
            ).render_as_string(hide_password=False)
            engine = todo_rls.create_engine(app_url)
            try:
                # The verifier, its keys and begin_scope made before the extension work on
                # the workers: each user sees their own rows only.
                for user_id in (alice, bob):
                    with todo_rls.scoped_session(engine, user_id, signing_key=key) as session:
                        owners = session.connection().execute(text("select user_id from task"))
                        assert owners.scalars().all() == [user_id]
            finally:
                engine.dispose()
        finally:
            with citus_cluster.coordinator.connect(dbname, autocommit=True) as conn:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(login)))
