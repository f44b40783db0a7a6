"""The session wrapper on a Citus coordinator, with the verified identity: the workers see the
signed context begin_scope sets, and nothing else, at the round trips of a single node."""

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine, text
from sqlmodel import Session

import todo_rls
from todo_rls import ContextRejectedError, EngineSettings, chat, keys, scoped_session, tasks
from todo_rls.bench.roundtrips import batches, traced
from todo_rls.identity import SigningKey

from citus_probe import users_on_two_workers
from fix_citus import CitusApp
from fix_db import create_user

pytestmark = pytest.mark.citus

# psycopg prepares a statement on its 5th use (one extra round trip, once): warm up past it.
WARM_UP_ROUNDS = 8
COUNT_ALL = text("select count(*) from public.task")  # no user_id filter: every shard
COUNT_OWN = text("select count(*) from public.task where user_id = :user_id")  # routed


@pytest.fixture(scope="module")
def users(citus_app: CitusApp) -> tuple[str, str]:
    """alice and bob, whose rows live on different workers."""
    with citus_app.admin() as conn:
        alice, bob = users_on_two_workers(conn)
        for user_id in (alice, bob):
            create_user(conn, user_id)
    return alice, bob


@pytest.fixture
def engine(citus_app: CitusApp) -> Iterator[Engine]:
    """The library's engine on the coordinator, one pooled connection (reused by every session)."""
    engine = todo_rls.create_engine(
        citus_app.url(), EngineSettings(pool_size=1, max_overflow=0, pre_ping=False)
    )
    yield engine
    engine.dispose()


def count(engine: Engine, scope: str | None, query: Any, **params: str) -> int:
    """One transaction's count: scoped to the user scope, or unscoped (None)."""
    with scoped_session(engine, scope) if scope else Session(engine) as session:
        result: int = session.connection().execute(query, params).scalar_one()
        session.commit()
        return result


def test_each_user_sees_and_changes_only_their_own_rows(
    engine: Engine, users: tuple[str, str]
) -> None:
    alice, bob = users
    with scoped_session(engine, alice) as session:
        assert session.connection().execute(text("select current_user")).scalar_one() != "postgres"
        task = tasks.create(session, "alice's")
        conversation = chat.create_conversation(session, "alice's chat")
        chat.add_message(session, str(conversation.id), "user", "hello")
        session.commit()
        task_id, conversation_id = str(task.id), str(conversation.id)
    with scoped_session(engine, bob) as session:
        tasks.create(session, "bob's")
        session.commit()
    # Positive control: the owner sees the rows, routed and through every shard.
    with scoped_session(engine, alice) as session:
        assert tasks.get(session, task_id).title == "alice's"
        assert [m.content for m in chat.list_messages(session, conversation_id).items] == ["hello"]
        owners = session.connection().execute(text("select distinct user_id from task"))
        assert owners.scalars().all() == [alice]
    with scoped_session(engine, bob) as session:
        with pytest.raises(todo_rls.NotFoundError):
            tasks.get(session, task_id)
        with pytest.raises(todo_rls.NotFoundError):
            tasks.update(session, task_id, title="bob was here")
        assert session.connection().execute(COUNT_OWN, {"user_id": alice}).scalar_one() == 0
        owners = session.connection().execute(text("select distinct user_id from task"))
        assert owners.scalars().all() == [bob]
        session.rollback()
    with scoped_session(engine, alice) as session:
        assert tasks.get(session, task_id).title == "alice's"  # bob's update changed nothing


def test_an_unscoped_transaction_after_a_scoped_one_sees_nothing(
    engine: Engine, users: tuple[str, str]
) -> None:
    alice, _ = users
    with scoped_session(engine, alice) as session:
        tasks.create(session, "seen only when scoped")
        session.commit()
    # Positive control on the same pooled connection (and so the same worker connections).
    assert count(engine, alice, COUNT_OWN, user_id=alice) > 0
    assert count(engine, None, COUNT_OWN, user_id=alice) == 0  # routed to alice's worker
    assert count(engine, None, COUNT_ALL) == 0  # every shard
    assert count(engine, alice, COUNT_ALL) > 0  # and scoped again: the user is back


def test_sql_that_sets_another_user_on_the_workers_is_refused(
    engine: Engine, users: tuple[str, str]
) -> None:
    alice, bob = users
    with scoped_session(engine, alice) as session:
        tasks.create(session, "alice's, for the forged-context control")
        session.commit()
    with scoped_session(engine, bob) as session:
        tasks.create(session, "bob's, the target")
        session.commit()
    # What an injection in alice's request could run: SET LOCAL, propagated to the workers.
    forge = [
        "select pg_catalog.set_config('citus.propagate_set_commands', 'local', true)",
        f"set local app.user_id = '{bob}'",  # a random test id: the attack itself
    ]
    with scoped_session(engine, alice) as session:
        assert session.connection().execute(COUNT_OWN, {"user_id": alice}).scalar_one() > 0
        for statement in forge:
            session.connection().exec_driver_sql(statement)
        with pytest.raises(ContextRejectedError, match="signature does not match"):
            session.connection().execute(COUNT_OWN, {"user_id": bob}).scalar_one()


def test_a_retired_key_is_refused_on_the_workers_at_once(
    citus_app: CitusApp, engine: Engine, users: tuple[str, str]
) -> None:
    alice, _ = users
    key = SigningKey(os.urandom(32))
    with citus_app.admin() as admin:
        keys.add(admin, key)
        try:
            with scoped_session(engine, alice, signing_key=key) as session:
                tasks.create(session, "signed with the second key")
                session.commit()
            # The workers' backends of this pooled connection now hold the key ring in their
            # cached plans of the verifier; the retirement must reach them.
            assert count_with(engine, alice, key) > 0
            keys.retire(admin, key.key_id, timedelta(0))
            with pytest.raises(ContextRejectedError, match=f"signed with key {key.key_id}"):
                count_with(engine, alice, key)
            assert count(engine, alice, COUNT_OWN, user_id=alice) > 0  # the run's key still works
        finally:
            keys.remove(admin, key.key_id)


def count_with(engine: Engine, user_id: str, key: SigningKey) -> int:
    """user_id's routed task count, in a transaction signed with key."""
    with scoped_session(engine, user_id, signing_key=key) as session:
        result: int = session.connection().execute(COUNT_OWN, {"user_id": user_id}).scalar_one()
        session.commit()
        return result


def test_the_audit_trail_is_written_to_the_users_co_located_shard(
    citus_app: CitusApp, engine: Engine, users: tuple[str, str]
) -> None:
    alice, bob = users
    with scoped_session(engine, alice) as session:
        task = tasks.create(session, "audited")
        tasks.toggle(session, str(task.id))
        tasks.delete(session, str(task.id))
        session.commit()
    trail = text(
        "select action from audit_event"
        " where user_id = :user_id and row_id = cast(:row_id as uuid) order by occurred_at"
    )
    with scoped_session(engine, alice) as session:
        actions = session.connection().execute(trail, {"user_id": alice, "row_id": task.id})
        assert actions.scalars().all() == ["insert", "update", "delete"]
    with scoped_session(engine, bob) as session:  # the trail is alice's alone
        actions = session.connection().execute(trail, {"user_id": alice, "row_id": task.id})
        assert actions.scalars().all() == []
    with citus_app.admin() as admin:  # stored in the shard of alice's rows
        row = admin.execute(
            "select pg_catalog.get_shard_id_for_distribution_column(t, %s::text)"
            " from pg_catalog.unnest(array['public.audit_event', 'public.task']::regclass[]) t",
            (alice,),
        ).fetchall()
        shards = [shard for (shard,) in row]
        placements = admin.execute(
            "select shardid, groupid from pg_catalog.pg_dist_placement where shardid = any(%s)",
            (shards,),
        ).fetchall()
        assert len({group for _, group in placements}) == 1, placements


def test_a_savepoint_cannot_move_the_workers_off_the_user(
    engine: Engine, users: tuple[str, str]
) -> None:
    alice, _ = users
    with scoped_session(engine, alice) as session:
        before = session.connection().execute(COUNT_ALL).scalar_one()
        with session.begin_nested():  # SAVEPOINT ... RELEASE SAVEPOINT
            tasks.create(session, "inside a savepoint")
        nested = session.begin_nested()
        tasks.create(session, "rolled back")
        nested.rollback()  # ROLLBACK TO SAVEPOINT
        owners = session.connection().execute(text("select distinct user_id from task"))
        assert owners.scalars().all() == [alice]
        assert session.connection().execute(COUNT_ALL).scalar_one() == before + 1
        session.commit()


def transaction_batches(engine: Engine, session_of: Any, user_id: str) -> list[str]:
    """The round trips of one routed count and COMMIT in session_of(engine)."""

    def run() -> None:
        with session_of(engine) as session:
            session.connection().execute(COUNT_OWN, {"user_id": user_id}).scalar_one()
            session.commit()

    for _ in range(WARM_UP_ROUNDS):
        run()
    return batches(traced(engine, run))


def test_scoping_costs_the_round_trips_of_a_single_node(
    citus_app: CitusApp, engine: Engine, users: tuple[str, str]
) -> None:
    alice, _ = users
    plain_engine = sqlalchemy.create_engine(  # SQLAlchemy's own: no todo_rls hook
        citus_app.url(), pool_size=1, max_overflow=0
    )
    try:
        plain = transaction_batches(plain_engine, Session, alice)
    finally:
        plain_engine.dispose()
    scoped = transaction_batches(engine, lambda e: scoped_session(e, alice), alice)
    unscoped = transaction_batches(engine, Session, alice)
    # BEGIN, query, COMMIT: the count tests/test_round_trips.py asserts on a single node.
    assert len(plain) == 3, plain
    assert len(scoped) == len(unscoped) == 3, (scoped, unscoped)
    # begin_scope once, in BEGIN's batch: no second SET LOCAL for a savepoint to undo.
    assert sum(batch.count("todo_rls.begin_scope") for batch in scoped) == 1, scoped
