"""What an app login can see of other sessions on Citus: a bind parameter becomes a literal.

The identity work sends the user id and its signature as bind parameters, so another session
of the same login sees ``$1`` in pg_stat_activity (RLS-FACTS). On Citus the scope reaches the
workers as ``set local app.user_id = '<literal>'``, and any login may run SQL on the workers
through run_command_on_workers: facts for docs/citus.md and /work/coord/citus-facts.md.
"""

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from fix_citus import CITUS_LOGIN_PASSWORD, CitusApp, Probe, login_role

pytestmark = pytest.mark.citus

Conn = psycopg.Connection[tuple[Any, ...]]
ON_WORKERS = "select nodeport, success, result from pg_catalog.run_command_on_workers(%s)"


@pytest.fixture(scope="module")
def other_login(citus_probe: Probe) -> Iterator[str]:
    """A second login role of the app (also a member of todo_app)."""
    with login_role(citus_probe.app.cluster, citus_probe.app.dbname) as name:
        yield name


def connect_as(app: CitusApp, login: str) -> Conn:
    """An autocommit connection to the coordinator as login."""
    return app.cluster.coordinator.connect(
        app.dbname, user=login, password=CITUS_LOGIN_PASSWORD, autocommit=True
    )


def test_a_plain_login_runs_sql_on_every_node(citus_probe: Probe) -> None:
    with citus_probe.app.connect(autocommit=True) as conn:
        assert conn.execute(
            "select rolsuper, rolcanlogin from pg_roles where rolname = current_user"
        ).fetchone() == (False, True)
        on_workers = conn.execute(ON_WORKERS, ("select current_user",)).fetchall()
        assert sorted(on_workers) == [
            (port, True, citus_probe.app.login) for port in sorted(citus_probe.worker_ports)
        ]
        everywhere = conn.execute(
            "select success, result from pg_catalog.run_command_on_all_nodes('select current_user')"
        ).fetchall()
        assert everywhere == [(True, citus_probe.app.login)] * (len(citus_probe.worker_ports) + 1)


@pytest.fixture
def scoped_session(citus_probe: Probe) -> Iterator[tuple[Conn, str]]:
    """A session of the app login, scoped with a secret-looking value, idle in transaction.

    A distributed query first opens its worker connections; the scope's SET LOCAL then goes to
    those open connections as a command of its own, and stays their last query.
    """
    token = f"{citus_probe.alice}.{secrets.token_hex(16)}"
    with citus_probe.app.connect() as conn:
        conn.execute("select count(*) from task").fetchall()
        conn.execute("select probe.scope(%s)", (token,))  # a bind parameter on the coordinator
        yield conn, token
        conn.rollback()


def worker_queries(conn: Conn, login: str) -> str:
    """The query texts of login's backends on the workers, as conn's role can see them."""
    found = conn.execute(
        ON_WORKERS,
        (
            "select coalesce(string_agg(query, ' || '), '') from pg_stat_activity"
            f" where usename = '{login}' and pid <> pg_backend_pid()",
        ),
    ).fetchall()
    assert all(ok for _, ok, _ in found), found
    return " || ".join(result for _, _, result in found)


def test_the_scope_literal_is_readable_on_the_workers_by_the_same_login(
    citus_probe: Probe, scoped_session: tuple[Conn, str], other_login: str
) -> None:
    _, token = scoped_session
    app = citus_probe.app
    with connect_as(app, app.login) as same, connect_as(app, other_login) as other:
        # On the coordinator the session's query shows the parameter, not the value.
        coordinator = same.execute(
            "select query from pg_stat_activity where usename = %s and pid <> pg_backend_pid()",
            (app.login,),
        ).fetchall()
        assert ("select probe.scope($1)",) in coordinator
        assert token not in str(coordinator)
        # On the workers Citus sent it as a literal, and the same login reads it back there.
        assert f"set local app.user_id = '{token}'" in worker_queries(same, app.login)
        # Another login of the same group role sees no query text (PostgreSQL's own rule).
        assert token not in worker_queries(other, app.login)


def test_citus_stat_activity_shows_worker_queries_to_the_same_login_only(
    citus_probe: Probe, scoped_session: tuple[Conn, str], other_login: str
) -> None:
    _, token = scoped_session
    app = citus_probe.app
    query = "select nodeid, query from citus_stat_activity where usename = %s"
    with connect_as(app, app.login) as same, connect_as(app, other_login) as other:
        coordinator = same.execute("select nodeid from pg_dist_node where groupid = 0").fetchone()
        seen = same.execute(query, (app.login,)).fetchall()
        assert any(token in text for node, text in seen if (node,) != coordinator), seen
        hidden = other.execute(query, (app.login,)).fetchall()
        assert hidden, "the other login sees the backends exist"
        assert {text for _, text in hidden} == {"<insufficient privilege>"}
        dist = "select query from citus_dist_stat_activity where usename = %s"
        assert {text for (text,) in other.execute(dist, (app.login,))} == {
            "<insufficient privilege>"
        }
