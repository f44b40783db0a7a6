"""The Hypothesis model of tests/test_model_based.py, on distributed tables through the
coordinator: every user sees exactly the oracle's rows, an unscoped session sees nothing, and a
weakened policy on a distributed table makes the walk fail."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test
from psycopg import sql
from sqlalchemy import exc, text
from test_model_based import (
    HOSTILE_USER_IDS,
    MODEL_SETTINGS,
    WEAKENINGS,
    DalMachine,
    World,
    expect_refused,
    picks,
)

import todo_rls
from todo_rls import Conversation, EngineSettings, Task, scoped_session
from todo_rls.owned_rows import update_owned
from todo_rls.testing.citus import CitusCluster

from fix_citus import migrated_app
from fix_db import create_user, new_user_id

pytestmark = pytest.mark.citus

# Fewer walks than on a single node: each step costs a few shard round trips more, and the
# single-node suite explores the DAL itself; here the question is the distributed tables.
CITUS_MODEL_SETTINGS = settings(MODEL_SETTINGS, max_examples=8, stateful_step_count=20)
CITUS_KEEPS_OWNER = "modifying the partition value of rows is not allowed"
# The weakenings a walk can show on Citus. An UPDATE's WITH CHECK guards only user_id, which
# Citus lets nobody change: "update policy that checks nothing" is no hole there (the
# isolation matrix of tests/test_citus_plugin.py covers the write policies).
CITUS_WEAKENINGS = {"select policy always true": WEAKENINGS["select policy always true"]}


class CitusDalMachine(DalMachine):
    """The model, where user_id is the distribution column: moving a row to another user is
    refused to everyone, owner or not, before any policy runs."""

    @rule(
        who=st.integers(0, 3),
        by_owner=st.booleans(),
        pick=picks,
        missing=st.uuids(),
        to=st.integers(0, 3),
        table=st.sampled_from(["task", "conversation"]),
        through_dal=st.booleans(),
    )
    def re_own(
        self,
        who: int,
        by_owner: bool,
        pick: int | None,
        missing: uuid.UUID,
        to: int,
        table: str,
        through_dal: bool,
    ) -> None:
        """Move rows to another user: refused by Citus, through the DAL or plain SQL."""
        model: type[Task] | type[Conversation] = Task if table == "task" else Conversation
        rows: Any = self.tasks if table == "task" else self.conversations
        row_id = self.target(rows, pick, missing)
        owner = self.owner(rows, row_id)
        if by_owner and owner is not None:
            who = self.world.users.index(owner)
        with self.acting_as(who) as (user, session):
            others = [other for other in self.world.users if other != user]
            new_owner = others[to % len(others)]

            def move() -> object:
                if through_dal:
                    return update_owned(session, model, row_id, {"user_id": new_owner})
                return session.connection().execute(sa.update(model).values(user_id=new_owner))

            error = expect_refused(f"moving {table} rows to {new_owner!r}", move)
            assert isinstance(error, exc.NotSupportedError), error
            assert CITUS_KEEPS_OWNER in str(error), error
            session.rollback()


def citus_machine_for(world: World) -> type[CitusDalMachine]:
    """CitusDalMachine bound to world, in the form run_state_machine_as_test takes."""

    class BoundCitusDalMachine(CitusDalMachine):
        def __init__(self) -> None:
            super().__init__(world)

    return BoundCitusDalMachine


@pytest.fixture(scope="module")
def world(citus_cluster: CitusCluster) -> Iterator[World]:
    """The model's world on a Citus database of this module's (the hostile user ids are fixed
    names; every walk starts from empty tables, as the machine's teardown leaves them)."""
    with migrated_app(citus_cluster) as app, app.admin() as admin:
        engine = todo_rls.create_engine(app.url(), EngineSettings(pool_size=2, max_overflow=0))
        users = (new_user_id(), new_user_id(), *HOSTILE_USER_IDS)
        for user in users:
            create_user(admin, user)
        with scoped_session(engine, users[0]) as session:
            # The machine runs as the application login role, bound by RLS.
            facts = session.connection().execute(
                text("select current_user, row_security_active('task')")
            )
            assert tuple(facts.one()) == (app.login, True)
        try:
            yield World(engine, admin, users)
        finally:
            engine.dispose()


def test_what_every_user_sees_matches_the_model_on_citus(world: World) -> None:
    run_state_machine_as_test(citus_machine_for(world), settings=CITUS_MODEL_SETTINGS)


@pytest.mark.parametrize("weakening", CITUS_WEAKENINGS)
def test_model_catches_a_weakened_policy_on_a_distributed_table(
    world: World, weakening: str
) -> None:
    statement, report = CITUS_WEAKENINGS[weakening]
    catching = settings(
        CITUS_MODEL_SETTINGS, derandomize=True, database=None, phases=[Phase.generate]
    )
    # ALTER POLICY on the coordinator reaches every shard; the module's other walk shares the
    # database, so the policy is put back as it was.
    with policies_restored(world.admin):
        world.admin.execute(statement)
        with pytest.raises(AssertionError, match=report):
            run_state_machine_as_test(citus_machine_for(world), settings=catching)


@contextmanager
def policies_restored(admin: psycopg.Connection[Any]) -> Iterator[None]:
    """The task table's policies as they are now, put back after the block (and checked)."""
    before = admin.execute(TASK_POLICIES).fetchall()
    try:
        yield
    finally:
        for name, using, check in before:
            clauses = [
                sql.SQL("{} ({})").format(sql.SQL(keyword), sql.SQL(expression))
                for keyword, expression in (("using", using), ("with check", check))
                if expression is not None  # pg_get_expr's own text: SQL the server wrote
            ]
            admin.execute(
                sql.SQL("alter policy {} on public.task {}").format(
                    sql.Identifier(name), sql.SQL(" ").join(clauses)
                )
            )
        assert admin.execute(TASK_POLICIES).fetchall() == before


TASK_POLICIES = """
select polname::text, pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)
from pg_catalog.pg_policy where polrelid = 'public.task'::regclass order by polname
"""
