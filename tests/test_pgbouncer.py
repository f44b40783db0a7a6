"""Through a real transaction-mode PgBouncer, every scoped transaction sees only its own user.

Neon's pooled URL is PgBouncer in transaction mode: consecutive transactions of one client may
run on different server connections, and one server connection serves many clients. These
tests run many interleaved users on few server connections and check each transaction, and
show, as the control, that a session-level set_config does leak through this very PgBouncer.
"""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

import todo_rls
from todo_rls import EngineSettings

from fix_db import APP_LOGIN, SIGNING_KEY, create_user
from fix_pgbouncer import PgBouncer

CLIENTS = 12  # client connections (one per user), against PgBouncer's 3 server connections
ROUNDS = 8

OBSERVE = text("""
select current_user::text as role,
       pg_catalog.row_security_active('public.task') as rls,
       pg_catalog.current_setting('app.user_id', true) as guc,
       pg_catalog.pg_backend_pid() as pid,
       array(select id::text from public.task) as ids
""")
INSERT = text("insert into public.task (user_id, title) values (:user_id, 'pooled') returning id")


@dataclass(frozen=True)
class Seen:
    """One transaction's view: who it ran as and every task id it could see."""

    user_id: str | None  # None: an unscoped transaction
    client: int  # id() of the psycopg client connection to PgBouncer
    role: str
    rls: bool
    guc: str | None
    pid: int
    ids: frozenset[str]


@pytest.fixture
def pooled_engine(pgbouncer: PgBouncer, dbname: str) -> Iterator[Engine]:
    """The library's engine through PgBouncer, with a client connection per user."""
    settings = EngineSettings(pgbouncer=True, pool_size=CLIENTS, max_overflow=0, pool_timeout=30)
    engine = todo_rls.create_engine(pgbouncer.url(dbname), settings)
    yield engine
    engine.dispose()


def _seen(user_id: str | None, client: object, row: Any) -> Seen:
    return Seen(user_id, id(client), row.role, row.rls, row.guc, int(row.pid), frozenset(row.ids))


def _scoped_round(engine: Engine, user_id: str, barrier: threading.Barrier) -> tuple[str, Seen]:
    """Insert one task and read every visible one, in one scoped transaction."""
    barrier.wait()  # all users start their transaction together, so they interleave
    with todo_rls.scoped_session(engine, user_id) as session:
        new_id = str(session.execute(INSERT, {"user_id": user_id}).scalar_one())
        client = session.connection().connection.dbapi_connection
        seen = _seen(user_id, client, session.execute(OBSERVE).one())
        session.commit()
    return new_id, seen


def _unscoped_round(engine: Engine) -> Seen:
    with engine.connect() as conn, conn.begin():
        return _seen(None, conn.connection.dbapi_connection, conn.execute(OBSERVE).one())


def test_interleaved_users_on_few_server_connections_see_only_their_own_rows(
    admin: psycopg.Connection[Any], pgbouncer: PgBouncer, pooled_engine: Engine
) -> None:
    users = [create_user(admin) for _ in range(CLIENTS)]
    # Arranged as the superuser, directly: a row of someone who never connects, to be hidden.
    stranger = create_user(admin)
    admin.execute("insert into task (user_id, title) values (%s, 'not yours')", (stranger,))
    barrier = threading.Barrier(CLIENTS)
    written: dict[str, set[str]] = {user: set() for user in users}
    scoped: list[Seen] = []
    unscoped: list[Seen] = []
    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(ROUNDS):
            for new_id, seen in pool.map(lambda u: _scoped_round(pooled_engine, u, barrier), users):
                assert seen.user_id is not None
                written[seen.user_id].add(new_id)
                # Positive control and isolation at once: exactly what this user wrote so far.
                assert seen.ids == frozenset(written[seen.user_id]), seen
                assert (seen.role, seen.rls, seen.guc) == (APP_LOGIN, True, seen.user_id), seen
                scoped.append(seen)
            unscoped.extend(pool.map(lambda _: _unscoped_round(pooled_engine), range(CLIENTS)))

    assert len(scoped) == CLIENTS * ROUNDS
    assert all(len(ids) == ROUNDS for ids in written.values())
    for seen in unscoped:
        assert (seen.role, seen.rls, seen.ids) == (APP_LOGIN, True, frozenset()), seen
        assert seen.guc in (None, ""), seen
    # The sharing is real: more clients than server backends, and one backend served several
    # users (so a leaked setting would have reached someone else).
    clients = {seen.client for seen in scoped}
    backends = {seen.pid for seen in scoped}
    users_per_backend = {pid: {s.user_id for s in scoped if s.pid == pid} for pid in backends}
    print(
        f"\n{len(scoped)} scoped + {len(unscoped)} unscoped transactions of {CLIENTS} users on "
        f"{len(clients)} client connections, {len(backends)} server backends; users per "
        f"backend: {sorted(len(u) for u in users_per_backend.values())}"
    )
    assert len(backends) <= pgbouncer.pool_size < len(clients)
    assert max(len(u) for u in users_per_backend.values()) > 1


def test_prepared_statements_stay_off_through_pgbouncer(
    admin: psycopg.Connection[Any], pooled_engine: Engine
) -> None:
    # psycopg prepares a statement on its 5th run; PgBouncer 1.18 would then send the EXECUTE
    # to a server that never saw the PREPARE. Twenty runs go through because it never prepares.
    alice = create_user(admin)
    admin.execute("insert into task (user_id, title) values (%s, 'mine')", (alice,))
    with todo_rls.scoped_session(pooled_engine, alice) as session:
        dbapi_connection = session.connection().connection.dbapi_connection
        assert isinstance(dbapi_connection, psycopg.Connection)
        assert dbapi_connection.prepare_threshold is None
        for _ in range(20):
            assert len(session.execute(OBSERVE).one().ids) == 1
            session.commit()


def test_session_level_set_config_leaks_through_pgbouncer(
    admin: psycopg.Connection[Any], pgbouncer: PgBouncer, dbname: str
) -> None:
    """The control: this PgBouncer really hands one client's session state to the next."""
    alice = create_user(admin)
    task = admin.execute(
        "insert into task (user_id, title) values (%s, 'alice only') returning id::text", (alice,)
    ).fetchone()
    assert task is not None
    conninfo = pgbouncer.conninfo(dbname)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as careless:
        # What the library never does: a (validly signed) context that outlives the transaction.
        row = careless.execute(
            "select set_config('app.user_id', %s, false), set_config('app.user_sig', %s, false),"
            " pg_backend_pid(), array(select id::text from task)",
            (alice, SIGNING_KEY.sign(alice, 600)),
        ).fetchone()
        assert row is not None
        poisoned_pid = row[2]
        assert row[3] == [task[0]]  # positive control: alice sees her task
    leaks = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as other:
        for _ in range(20):
            guc, pid, ids = other.execute(
                "select current_setting('app.user_id', true), pg_backend_pid(),"
                " array(select id::text from task)"
            ).fetchone() or (None, None, None)
            if pid == poisoned_pid:
                leaks.append((guc, ids))
    # Another client that never set anything reads alice's id and alice's task.
    assert leaks, "PgBouncer never routed the other client to the poisoned server connection"
    assert all(leak == (alice, [task[0]]) for leak in leaks), leaks
    # The PgBouncer is the run's: end the poisoned server connection for the tests after this.
    admin.execute("select pg_terminate_backend(%s)", (poisoned_pid,))
