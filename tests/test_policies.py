"""Row-level security holds for every table, command and kind of caller, as the app role."""

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from fix_db import APP_LOGIN, AppConnector
from fix_server import PgServer
from isolation import (
    ACTOR_LABELS,
    ACTORS,
    OWNED_TABLES,
    PROBES,
    Connect,
    Probe,
    World,
    acting,
    build_world,
    key_of,
)

TABLES = OWNED_TABLES


@pytest.fixture(scope="module")
def shared(pg_server: PgServer, module_dbname: str) -> Iterator[tuple[World, AppConnector]]:
    """One world for the whole module: every probe rolls back, so none can change it."""
    with pg_server.connect(module_dbname, autocommit=True) as admin:
        world = build_world(admin)
    connector = AppConnector(pg_server, module_dbname)
    yield world, connector
    connector.close_all()


@pytest.fixture
def world(shared: tuple[World, AppConnector]) -> World:
    return shared[0]


@pytest.fixture
def probe_connect(shared: tuple[World, AppConnector]) -> Iterator[AppConnector]:
    yield shared[1]
    shared[1].close_all()


@pytest.mark.parametrize("actor", ACTORS, ids=[ACTOR_LABELS[a].replace(" ", "_") for a in ACTORS])
@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_no_caller_but_the_owner_reaches_a_row(
    probe: Probe, actor: str, probe_connect: Connect, world: World
) -> None:
    assert probe.leaks(probe_connect, world, actor) is None


def test_the_owner_sees_exactly_their_rows_in_every_table(
    probe_connect: Connect, world: World
) -> None:
    for user in (world.alice, world.bob):
        actor = "alice" if user == world.alice else "bob"
        with acting(probe_connect, world, actor) as conn:
            for table in TABLES:
                query = sql.SQL("select {}::text from {}").format(
                    sql.Identifier(key_of(table)), sql.Identifier(table)
                )
                ids = conn.execute(query).fetchall()
                assert [row[0] for row in ids] == [world.rows[table][user]]


@pytest.mark.parametrize("table", TABLES)
def test_app_role_cannot_truncate(table: str, probe_connect: Connect, world: World) -> None:
    with acting(probe_connect, world, "alice") as conn:
        count = sql.SQL("select count(*) from {}").format(sql.Identifier(table))
        assert conn.execute(count).fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("truncate {}").format(sql.Identifier(table)))


def test_app_role_holds_only_row_privileges(probe_connect: Connect) -> None:
    rows = (
        probe_connect()
        .execute(
            """
        select c.relname, a.privilege_type
        from pg_class c, aclexplode(c.relacl) a
        where c.relnamespace = 'public'::regnamespace
          and a.grantee = 'todo_app'::regrole
        order by 1, 2
        """
        )
        .fetchall()
    )
    expected = [(t, p) for t in sorted(TABLES) for p in ("DELETE", "INSERT", "SELECT", "UPDATE")]
    assert rows == expected


def test_app_role_cannot_change_policies_or_rls(probe_connect: Connect, world: World) -> None:
    with acting(probe_connect, world, "alice") as conn:
        assert conn.execute("select count(*) from task").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("alter table task disable row level security")


def test_app_role_is_not_privileged(probe_connect: Connect) -> None:
    conn = probe_connect()
    row = conn.execute(
        "select rolsuper, rolbypassrls from pg_roles where rolname = current_user"
    ).fetchone()
    assert conn.info.parameter_status("session_authorization") == APP_LOGIN
    assert row == (False, False)
    assert conn.execute("select pg_has_role('todo_app', 'MEMBER')").fetchone() == (True,)


@pytest.mark.parametrize("table", TABLES)
def test_copy_from_into_a_protected_table_is_refused(
    table: str, probe_connect: Connect, world: World
) -> None:
    copy_in = sql.SQL("copy {} (user_id) from stdin").format(sql.Identifier(table))
    with (
        acting(probe_connect, world, "alice") as conn,
        pytest.raises(psycopg.errors.FeatureNotSupported),
        conn.cursor().copy(copy_in) as copy,
    ):
        copy.write_row((world.alice,))
