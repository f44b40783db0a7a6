"""The shared test database's guard (fix_shared.SharedDatabase): a test that changes the
schema is named with the change and the next test gets a fresh copy; rows are not a change;
a test that ends the guard's own connection does not break it."""

from typing import Any

import pytest

from fix_db import create_user
from fix_server import PgServer
from fix_shared import SharedDatabase


@pytest.fixture
def shared(pg_server: PgServer, migrated_server: Any) -> Any:
    """A SharedDatabase of its own (not the run's), from the run's migrated template."""
    shared = SharedDatabase(pg_server, migrated_server.template_dbname)
    yield shared
    shared.drop()


def test_a_schema_change_is_named_and_the_copy_replaced(pg_server: PgServer, shared: Any) -> None:
    shared.check_unchanged("control")  # positive control: the fresh copy passes
    first = shared.name
    with pg_server.connect(first, autocommit=True) as conn:
        conn.execute("alter policy task_select on public.task using (true)")
    with pytest.raises(AssertionError, match=r"the test changed the shared test database") as info:
        shared.check_unchanged("the test")
    assert "+ policy public task task_select" in str(info.value) and "true" in str(info.value)
    assert shared.name != first
    with pg_server.connect("postgres") as conn:
        names = {name for (name,) in conn.execute("select datname::text from pg_database")}
    assert first not in names and shared.name in names
    shared.check_unchanged("after")  # the new copy is the template's again


def test_rows_are_not_a_change(pg_server: PgServer, shared: Any) -> None:
    with pg_server.connect(shared.name, autocommit=True) as conn:
        user_id = create_user(conn)
        conn.execute("insert into public.task (user_id, title) values (%s, 'a row')", (user_id,))
    shared.check_unchanged("rows only")


def test_ending_every_backend_of_the_database_does_not_break_the_guard(
    pg_server: PgServer, shared: Any
) -> None:
    with pg_server.connect("postgres", autocommit=True) as conn:
        ended = conn.execute(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = %s",
            (shared.name,),
        ).fetchone()
    assert ended == (1,)  # the guard's own connection
    shared.check_unchanged("after the backends ended")
