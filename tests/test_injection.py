"""An attacker with one SQL injection in the app, as a login member of todo_app (issue 11).

Every attack goes through one deliberately vulnerable handler, ``search``, which pastes the
request's text into its SQL, run through scoped_session as a LOGIN member of todo_app made for
the test and dropped after it. Each attack has its positive control: the same payload with a
harmless value does run (so the injection works), and the victim's rows exist and are visible
to the victim. What the attacker must not get: another user's rows, a write in another user's
name, anything left on a pooled connection that a later request inherits or executes, another
request's user id or context, the signing key.
"""

import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

import todo_rls
import todo_rls.migrate
from todo_rls import ContextRejectedError, EngineSettings, TamperedConnectionError, keys, tasks
from todo_rls.cli import main
from todo_rls.identity import SigningKey
from todo_rls.owner_rls import FORGEABLE_OWNER_MATCHES

from fix_db import (
    LOGIN_PASSWORD,
    SIGNING_KEY,
    AppConnector,
    CreateRole,
    create_user,
    new_user_id,
    scope_to,
    url_as,
)
from fix_pgbouncer import PgBouncer
from fix_server import PgServer

# The bug under attack: the request's text pasted into SQL. Never write this.
VULNERABLE = "select id::text, title from task where title ilike '%{q}%'"


def search(session: Session, q: str) -> list[tuple[str, str]]:
    """The deliberately vulnerable handler: tasks whose title contains q."""
    return [(row[0], row[1]) for row in session.execute(text(VULNERABLE.format(q=q))).all()]


def titles(rows: list[tuple[str, str]]) -> set[str]:
    return {title for _, title in rows}


def union(*columns: str) -> str:
    """A single-statement payload: one more row of the handler's two text columns."""
    return f"' union all select {', '.join(columns)} --"


def stacked(*statements: str) -> str:
    """A stacked payload: statements after the handler's (simple-query protocol; the handler
    still returns its own statement's rows)."""
    return "'; " + " ".join(f"{s};" for s in statements) + " --"


def set_context(user_id: str, signature: str, local: bool) -> tuple[str, str]:
    """The two set_config calls that claim a context, as select-list items (text each)."""
    flag = "true" if local else "false"
    return (
        f"set_config('app.user_id', '{user_id}', {flag})",
        f"set_config('app.user_sig', {signature}, {flag})",
    )


ALICE_TITLE, BOB_TITLE = "alice's groceries", "bob's diagnosis"


@pytest.fixture
def login(admin: psycopg.Connection[Any], create_role: CreateRole) -> str:
    """A login role made for this test, a member of todo_app; dropped after it."""
    name = create_role("inject", "login")
    admin.execute(sql.SQL("grant todo_app to {}").format(sql.Identifier(name)))
    return name


def wait_for_backends_to_end(admin: psycopg.Connection[Any], login: str) -> None:
    """Closed connections' backends drop their temp tables as they exit, after close() returns;
    the login can be dropped only once they have."""
    deadline = time.monotonic() + 10
    query = "select count(*) from pg_stat_activity where usename = %s"
    while admin.execute(query, (login,)).fetchone() != (0,) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def engine(
    pg_server: PgServer, dbname: str, login: str, admin: psycopg.Connection[Any]
) -> Iterator[Engine]:
    """The library's engine as login, with ONE pooled connection: every request reuses it."""
    settings = EngineSettings(pool_size=1, max_overflow=0)
    engine = todo_rls.create_engine(url_as(pg_server, dbname, login), settings)
    yield engine
    engine.dispose()
    wait_for_backends_to_end(admin, login)


@pytest.fixture
def users(admin: psycopg.Connection[Any]) -> tuple[str, str]:
    """alice (the attacker's request) and bob (the victim), one task each."""
    alice, bob = create_user(admin), create_user(admin)
    for user, title in ((alice, ALICE_TITLE), (bob, BOB_TITLE)):
        admin.execute("insert into task (user_id, title) values (%s, %s)", (user, title))
    return alice, bob


def bobs_rows(admin: psycopg.Connection[Any], bob: str) -> list[tuple[Any, ...]]:
    """Every task of bob's, every column, as the superuser sees them."""
    return admin.execute("select * from task where user_id = %s order by id", (bob,)).fetchall()


def seen_by(engine: Engine, user: str) -> set[str]:
    """The titles user's own scoped request sees (the victim's positive control)."""
    with todo_rls.scoped_session(engine, user) as session:
        return titles(search(session, ""))


# --- the handler is injectable ----------------------------------------------------------------


def test_the_handler_is_injectable_as_the_login_with_rls_on(
    engine: Engine, login: str, users: tuple[str, str]
) -> None:
    alice, bob = users
    assert seen_by(engine, bob) == {BOB_TITLE}  # the victim's rows exist, bob sees them
    with todo_rls.scoped_session(engine, alice) as session:
        assert titles(search(session, "")) == {ALICE_TITLE}
        rows = search(session, union("current_user::text", "row_security_active('task')::text"))
        assert (login, "true") in rows  # single statement: the attacker's select ran
        # Stacked: the handler returns its own first result, the statements after it run too.
        search(session, stacked("select set_config('app.probe', current_user, true)"))
        assert (login, "stacked") in search(
            session, union("current_setting('app.probe')", "'stacked'")
        )


# --- acting as another user ---------------------------------------------------------------------

CLAIMS = [
    "bare id, no signature",
    "bob's id with alice's own signature",
    "a signature made up",
    "an expired signature for bob",
    # Installs and retires a key: its own database, so the shared one's key ring stays as is.
    pytest.param("bob signed with a retired key", marks=pytest.mark.own_database),
    "bob signed with a key never installed",
]


def claimed_signature(claim: str, admin: psycopg.Connection[Any], bob: str) -> str:
    """The app.user_sig value (an SQL expression) the attacker claims bob with."""
    if claim == "bare id, no signature":
        return "''"
    if claim == "bob's id with alice's own signature":
        return "current_setting('app.user_sig')"
    if claim == "a signature made up":
        return f"'v1.{SIGNING_KEY.key_id}.{int(time.time()) + 600:010d}.{'ab' * 32}'"
    if claim == "an expired signature for bob":  # a context read from a log, replayed later
        return f"'{SIGNING_KEY.sign(bob, 60, now=time.time() - 3600)}'"
    if claim == "bob signed with a retired key":  # a leaked key, rotated out since
        old = SigningKey(os.urandom(32))
        keys.add(admin, old)
        signature = old.sign(bob, 600)
        keys.retire(admin, old.key_id, timedelta(0))
        return f"'{signature}'"
    assert claim == "bob signed with a key never installed"
    return f"'{SigningKey(os.urandom(32)).sign(bob, 600)}'"


@pytest.mark.parametrize("local", [True, False], ids=["transaction-local", "session-level"])
@pytest.mark.parametrize("style", ["single statement", "stacked"])
@pytest.mark.parametrize("claim", CLAIMS)
def test_an_injection_cannot_act_as_another_user(
    claim: str,
    style: str,
    local: bool,
    engine: Engine,
    admin: psycopg.Connection[Any],
    users: tuple[str, str],
) -> None:
    alice, bob = users
    before = bobs_rows(admin, bob)
    assert seen_by(engine, bob) == {BOB_TITLE}  # control: the victim's row is there for bob

    def payload(user_id: str, signature: str) -> str:
        claimed = set_context(user_id, signature, local)
        if style == "single statement":
            return union(*claimed)
        return stacked(f"select {', '.join(claimed)}")

    # Control: the same payload claiming alice with her own context (which SQL in her request
    # can read) runs and changes nothing, and a context really signed for bob would read bob's
    # row: only the key stands between the attacker and bob.
    with todo_rls.scoped_session(engine, alice) as session:
        search(session, payload(alice, "current_setting('app.user_sig')"))
        assert titles(search(session, "")) == {ALICE_TITLE}
        search(session, payload(bob, f"'{SIGNING_KEY.sign(bob, 60)}'"))
        assert titles(search(session, "")) == {BOB_TITLE}
        session.rollback()

    signature = claimed_signature(claim, admin, bob)
    with todo_rls.scoped_session(engine, alice) as session:
        leaked: list[tuple[str, str]] = []
        with pytest.raises(ContextRejectedError, match="todo_rls: "):
            leaked += search(session, payload(bob, signature))
            leaked += search(session, "")  # the rest of alice's request
            session.execute(text("update task set title = 'pwned'"))
            session.commit()
        assert BOB_TITLE not in titles(leaked)
    assert bobs_rows(admin, bob) == before
    assert seen_by(engine, bob) == {BOB_TITLE}  # and the connection serves bob as bob


def test_a_rejected_context_does_not_reveal_the_mac_it_expected(
    engine: Engine, users: tuple[str, str]
) -> None:
    alice, bob = users
    claimed = f"v1.{SIGNING_KEY.key_id}.{int(time.time()) + 600:010d}."
    # What a leak would print: the MAC the database computes for this claim.
    right_mac = hmac.new(SIGNING_KEY.secret, (claimed + bob).encode(), hashlib.sha256).hexdigest()
    with todo_rls.scoped_session(engine, alice) as session:
        with pytest.raises(ContextRejectedError) as refused:
            search(session, union(*set_context(bob, f"'{claimed}{'0' * 64}'", True)))
            search(session, "")
        assert "does not match" in str(refused.value)  # control: the reason is named
        assert right_mac not in str(refused.value) and right_mac[:16] not in str(refused.value)


# --- a poisoned pooled connection -----------------------------------------------------------

# Session-level state an injection leaves on its connection, committed with alice's request.
POISONS = {
    "alice's own context, session-level": (
        "select set_config('app.user_id', current_setting('app.user_id'), false),"
        " set_config('app.user_sig', current_setting('app.user_sig'), false)"
    ),
    "bob's id, session-level": "select set_config('app.user_id', '{bob}', false)",
    "row_security off": "set row_security = off",
    "read-only by default": "set default_transaction_read_only = on",
    "temp table first on the path": (
        "create temp table task (like public.task including all); set search_path = pg_temp, public"
    ),
    "a role, no path": "set role todo_app; set search_path = ''",
}


def poison(session: Session, which: str, bob: str) -> None:
    search(session, stacked(POISONS[which].format(bob=bob)))


def unscoped_sees(session: Session) -> tuple[int, set[str]]:
    """(backend pid, titles) of a plain Session's request on the pooled connection."""
    pid = session.execute(text("select pg_backend_pid()")).scalar_one()
    return pid, titles(search(session, ""))


def bob_request(session: Session) -> tuple[int, set[str]]:
    """bob writes a task through the DAL and reads back what he sees: (pid, titles)."""
    tasks.create(session, "bob's new task")
    session.commit()
    pid = session.execute(text("select pg_backend_pid()")).scalar_one()
    return pid, titles(search(session, ""))


@pytest.mark.parametrize("which", POISONS)
def test_a_poisoned_connection_serves_the_next_requests_clean(
    which: str, engine: Engine, admin: psycopg.Connection[Any], users: tuple[str, str]
) -> None:
    alice, bob = users
    with todo_rls.scoped_session(engine, alice) as session:
        poisoned = session.execute(text("select pg_backend_pid()")).scalar_one()
        poison(session, which, bob)
        session.commit()
    # Control, past the library (psycopg's own BEGIN on the same connection): the state is there.
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        leftover = raw.execute(
            "select pg_backend_pid(), current_setting('app.user_id', true),"
            " current_setting('row_security'), current_setting('default_transaction_read_only'),"
            " current_setting('search_path'), current_user::text"
        ).fetchone()
        raw.rollback()
        conn.rollback()
    assert leftover is not None and leftover[0] == poisoned
    assert leftover[1:] != ("", "on", "off", '"$user", public', conn.engine.url.username)
    # The next requests on that very connection: an unscoped one sees and writes nothing...
    with Session(engine) as session:
        assert unscoped_sees(session) == (poisoned, set())
        with pytest.raises(Exception, match="row-level security"):
            tasks_insert = "insert into public.task (user_id, title) values (:u, 'x')"
            session.execute(text(tasks_insert), {"u": bob})
    # ...and bob's sees and writes exactly his own, in public.task.
    with todo_rls.scoped_session(engine, bob) as session:
        assert bob_request(session) == (poisoned, {BOB_TITLE, "bob's new task"})
    assert len(bobs_rows(admin, bob)) == 2


async def test_a_poisoned_async_connection_serves_the_next_requests_clean(
    pg_server: PgServer, dbname: str, login: str, users: tuple[str, str]
) -> None:
    alice, bob = users
    engine: AsyncEngine = todo_rls.create_async_engine(
        url_as(pg_server, dbname, login), EngineSettings(pool_size=1, max_overflow=0)
    )

    async def run(session: AsyncSession, statement: str) -> Any:
        return await (await session.connection()).execute(text(statement))

    try:
        async with todo_rls.scoped_async_session(engine, alice) as session:
            poisoned = (await run(session, "select pg_backend_pid()")).scalar_one()
            for which in ("alice's own context, session-level", "row_security off"):
                await run(session, VULNERABLE.format(q=stacked(POISONS[which])))
            await session.commit()
        async with engine.connect() as conn:  # control: past the library, the state is there
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert isinstance(driver, psycopg.AsyncConnection)
            cursor = await driver.execute(
                "select pg_backend_pid(), current_setting('app.user_id', true),"
                " current_setting('row_security')"
            )
            assert await cursor.fetchone() == (poisoned, alice, "off")
            await driver.rollback()
        async with AsyncSession(engine) as unscoped:
            assert (await run(unscoped, "select pg_backend_pid()")).scalar_one() == poisoned
            assert (await run(unscoped, VULNERABLE.format(q=""))).all() == []
        async with todo_rls.scoped_async_session(engine, bob) as session:
            assert (await run(session, "select pg_backend_pid()")).scalar_one() == poisoned
            rows = (await run(session, VULNERABLE.format(q=""))).all()
            assert {row[1] for row in rows} == {BOB_TITLE}
    finally:
        await engine.dispose()


def test_a_poisoned_server_connection_behind_pgbouncer_serves_the_next_clients_clean(
    pgbouncer: PgBouncer, dbname: str, users: tuple[str, str], admin: psycopg.Connection[Any]
) -> None:
    alice, bob = users
    settings = EngineSettings(pgbouncer=True, pool_size=4, max_overflow=0, pool_timeout=30)
    engine = todo_rls.create_engine(pgbouncer.url(dbname), settings)
    poisoned = None
    try:
        with todo_rls.scoped_session(engine, alice) as session:
            poisoned = session.execute(text("select pg_backend_pid()")).scalar_one()
            poison(session, "alice's own context, session-level", bob)
            poison(session, "row_security off", bob)
            session.commit()
        hits = []
        for _ in range(30):  # PgBouncer hands server connections round the clients
            with Session(engine) as session:
                pid, seen = unscoped_sees(session)
            with todo_rls.scoped_session(engine, bob) as session:
                bob_pid = session.execute(text("select pg_backend_pid()")).scalar_one()
                bob_sees = titles(search(session, ""))
            hits += [seen for p in (pid,) if p == poisoned]
            hits += [bob_sees - {BOB_TITLE} for p in (bob_pid,) if p == poisoned]
            assert seen == set() and bob_sees == {BOB_TITLE}
        assert hits, "no later request ran on the poisoned server connection"
    finally:
        engine.dispose()
        # The PgBouncer is the run's: a client that does not reset (test_pgbouncer's careless
        # one) would get row_security = off from this server connection.
        if poisoned is not None:
            admin.execute("select pg_terminate_backend(%s)", (poisoned,))


# --- the rest of the request after an injected COMMIT or ROLLBACK ----------------------------


@pytest.mark.parametrize("verb", ["commit", "rollback"])
def test_after_an_injected_commit_or_rollback_the_request_sees_and_writes_nothing(
    verb: str, engine: Engine, admin: psycopg.Connection[Any], users: tuple[str, str]
) -> None:
    alice, bob = users
    with todo_rls.scoped_session(engine, alice) as session:
        tasks.create(session, "alice, before the injection")
        assert titles(search(session, "")) == {ALICE_TITLE, "alice, before the injection"}
        search(session, stacked(verb))
        # psycopg now opens a transaction of its own, unscoped: the policies see no user.
        assert search(session, "") == []
        assert search(session, union("current_setting('app.user_id', true)", "'ctx'")) == [
            ("", "ctx")
        ]
        with pytest.raises(Exception, match="row-level security"):
            tasks.create(session, "alice, after the injection")
        session.rollback()
    kept = {row[0] for row in admin.execute("select title from task where user_id = %s", (alice,))}
    expected = {ALICE_TITLE, "alice, before the injection"} if verb == "commit" else {ALICE_TITLE}
    assert kept == expected
    assert seen_by(engine, bob) == {BOB_TITLE}


# --- replacing a statement psycopg prepared ---------------------------------------------------

PLANTED = "planted by the attacker"
# What the attacker wants bob's later request to run in its place, in bob's scoped transaction.
HIJACK = f"insert into public.task (user_id, title) select user_id, '{PLANTED}' from public.task"


def prepared_by_psycopg(session: Session) -> list[tuple[str, str, str]]:
    """(name, statement, parameter types) of what psycopg prepared, read through the handler."""
    rows = search(
        session,
        union("name::text", "statement || '|' || parameter_types::text").replace(
            " --", " from pg_prepared_statements where not from_sql --"
        ),
    )
    found = []
    for name, info in rows:
        statement, _, types = info.rpartition("|")
        if name.startswith("_pg3_"):
            found.append((name, statement, types))
    return found


def planted_for(admin: psycopg.Connection[Any], user: str) -> int:
    """How many of user's tasks the attacker's statement planted."""
    row = admin.execute(
        "select count(*) from task where user_id = %s and title = %s", (user, PLANTED)
    ).fetchone()
    assert row is not None
    return int(row[0])


def hijack_payload(name: str, types: str, *, replace: bool = True) -> str:
    """(Replace) statement name with HIJACK, keeping its parameter types so Bind still fits."""
    typelist = types.strip("{}").replace('"', "")  # {"character varying"}
    params = f" ({typelist})" if typelist else ""
    prepare = f"prepare {name}{params} as {HIJACK} returning 0::bigint"
    return stacked(f"deallocate {name}", prepare) if replace else stacked(prepare)


def test_a_statement_psycopg_prepared_cannot_be_replaced_by_sql(
    engine: Engine, admin: psycopg.Connection[Any], users: tuple[str, str]
) -> None:
    alice, bob = users
    # psycopg prepares a statement on its 5th run, and forgets them all on a rollback.
    for _ in range(6):
        with todo_rls.scoped_session(engine, bob) as session:
            assert tasks.count_open(session) == 1
            session.commit()
    with todo_rls.scoped_session(engine, alice) as session:
        pid = session.execute(text("select pg_backend_pid()")).scalar_one()
        prepared = [p for p in prepared_by_psycopg(session) if "count(" in p[1]]
        assert len(prepared) == 1, prepared  # control: bob's count is prepared, and visible
        name, _, types = prepared[0]
        search(session, hijack_payload(name, types))
        session.commit()
    # bob's next request on that connection: refused before it runs anything, the connection
    # discarded; his retry gets a clean one and counts his own task.
    with (
        pytest.raises(TamperedConnectionError, match="prepared with SQL"),
        todo_rls.scoped_session(engine, bob) as session,
    ):
        tasks.count_open(session)
    with todo_rls.scoped_session(engine, bob) as session:
        assert session.execute(text("select pg_backend_pid()")).scalar_one() != pid
        assert tasks.count_open(session) == 1
    assert planted_for(admin, bob) == 0


def test_the_hijack_works_on_a_connection_past_the_library(
    connect_app: AppConnector, login: str, admin: psycopg.Connection[Any], users: tuple[str, str]
) -> None:
    """The control: on a plain psycopg connection the replaced statement runs in bob's place."""
    _, bob = users
    count = "select count(*) from public.task where completed = %s"
    with connect_app(login) as conn:
        for _ in range(6):  # committed: psycopg forgets its prepared statements on a rollback
            with conn.transaction():
                scope_to(conn, bob)
                assert conn.execute(count, (False,)).fetchone() == (1,)
        ((name, types),) = conn.execute(
            "select name, parameter_types::text from pg_prepared_statements"
            " where not from_sql and statement like '%%count(%%'"
        ).fetchall()
        conn.execute(f"deallocate {name}")
        typelist = types.strip("{}").replace('"', "")
        conn.execute(f"prepare {name} ({typelist}) as {HIJACK} returning 0::bigint")
        with conn.transaction():
            scope_to(conn, bob)
            assert conn.execute(count, (False,)).fetchone() == (0,)  # bob ran the attacker's SQL
    assert planted_for(admin, bob) == 1


def test_without_server_side_prepared_statements_sql_prepare_is_never_executed(
    pg_server: PgServer,
    dbname: str,
    login: str,
    admin: psycopg.Connection[Any],
    users: tuple[str, str],
) -> None:
    alice, bob = users
    settings = EngineSettings(pool_size=1, max_overflow=0, prepared_statements=False)
    engine = todo_rls.create_engine(url_as(pg_server, dbname, login), settings)
    try:
        with todo_rls.scoped_session(engine, alice) as session:
            for n in range(3):  # psycopg would name its first statements _pg3_0, 1, 2
                search(session, hijack_payload(f"_pg3_{n}", "{boolean}", replace=False))
            session.commit()
        for _ in range(8):
            with todo_rls.scoped_session(engine, bob) as session:
                assert tasks.count_open(session) == 1
                left = session.execute(
                    text("select count(*) from pg_prepared_statements where from_sql")
                ).scalar_one()
                assert left == 3  # control: the attacker's statements are still there
                session.commit()
    finally:
        engine.dispose()
        wait_for_backends_to_end(admin, login)
    assert planted_for(admin, bob) == 0


# --- what other requests are doing ------------------------------------------------------------

TRANSACTIONS, WORKERS, MARK_EVERY = 1000, 8, 100
SIGNATURE = re.compile(r"v1\.[0-9a-f]{16}\.[0-9]{10}\.[0-9a-f]{64}")


def test_pg_stat_activity_shows_no_user_id_or_context_of_1000_concurrent_transactions(
    pg_server: PgServer,
    dbname: str,
    login: str,
    admin: psycopg.Connection[Any],
    connect_app: AppConnector,
) -> None:
    many = [create_user(admin) for _ in range(50)]
    settings = EngineSettings(pool_size=WORKERS, max_overflow=0, pool_timeout=60)
    engine = todo_rls.create_engine(url_as(pg_server, dbname, login), settings)
    stop, seen = threading.Event(), set[str]()

    def snoop() -> None:  # SQL injected into another request of the same login
        with connect_app(login, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "select query from pg_stat_activity"
                    " where usename = current_user and pid <> pg_backend_pid()"
                )
                seen.update(query for (query,) in rows)

    def transaction(n: int) -> None:
        with todo_rls.scoped_session(engine, many[n % len(many)]) as session:
            tasks.count_open(session)
            if n % MARK_EVERY == 0:  # control: a literal in a query does show
                session.execute(text(f"select 'marker {n}', pg_sleep(0.05)"))
            session.commit()

    snooper = threading.Thread(target=snoop)
    snooper.start()
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(transaction, range(TRANSACTIONS)))
    finally:
        stop.set()
        snooper.join()
        engine.dispose()
        wait_for_backends_to_end(admin, login)
    assert any("marker " in query for query in seen), "control: the snooper saw no literal"
    assert any("todo_rls.begin_scope($1" in query for query in seen), seen
    text_seen = "\n".join(seen)
    assert not [user for user in many if user in text_seen]
    assert not SIGNATURE.search(text_seen)
    assert SIGNING_KEY.secret.hex() not in text_seen


# --- what a login can do to itself ---------------------------------------------------------------

# Defaults the login sets for its own future connections (alter role current_user set ...).
ROLE_DEFAULTS = {
    "default_transaction_read_only": ("on", "SET003"),
    "row_security": ("off", "SET002"),
    "search_path": ("pg_temp, public", "SET002"),
    "client_encoding": ("LATIN1", "SET003"),
}


def run_check(capsys: pytest.CaptureFixture[str], url: str, login: str) -> list[tuple[str, str]]:
    """(rule, object) of each finding of `todo-rls check` as login."""
    main(["check", "--url", url, "--json", "--login-role", login])
    return [(f["rule"], f["object"]) for f in json.loads(capsys.readouterr().out)["findings"]]


def test_role_defaults_the_login_sets_on_itself_neither_widen_nor_stop_requests_and_are_found(
    engine: Engine,
    pg_server: PgServer,
    dbname: str,
    login: str,
    admin: psycopg.Connection[Any],
    users: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = users
    url = url_as(pg_server, dbname, login)
    assert run_check(capsys, url, login) == []  # control: clean before
    statements = [f"alter role current_user set {n} = {v}" for n, (v, _) in ROLE_DEFAULTS.items()]
    with todo_rls.scoped_session(engine, alice) as session:
        # Not this one: PostgreSQL 15 lets only a superuser store a placeholder's role default.
        with pytest.raises(Exception, match=r'permission denied to set parameter "app\.user_id"'):
            search(session, stacked(f"alter role current_user set app.user_id = '{bob}'"))
        session.rollback()
        search(session, stacked(*statements))
        session.commit()
    engine.dispose()  # new connections start with the defaults
    with connect_app_raw(pg_server, dbname, login) as raw:  # control: the defaults are in force
        shown = [raw.execute(f"show {name}").fetchone() for name in ROLE_DEFAULTS]
        assert shown == [(value,) for value, _ in ROLE_DEFAULTS.values()]
    with Session(engine) as session:
        assert unscoped_sees(session)[1] == set()
    with todo_rls.scoped_session(engine, bob) as session:
        assert bob_request(session)[1] == {BOB_TITLE, "bob's new task"}
    assert len(bobs_rows(admin, bob)) == 2
    found = run_check(capsys, url, login)
    assert sorted(set(found)) == sorted(
        {(rule, f"role {login}") for _, rule in ROLE_DEFAULTS.values()}
    )


def connect_app_raw(pg_server: PgServer, dbname: str, login: str) -> psycopg.Connection[Any]:
    return pg_server.connect(dbname, user=login, password=LOGIN_PASSWORD, autocommit=True)


def test_a_large_object_carries_only_what_the_request_could_read_and_is_found(
    engine: Engine,
    pg_server: PgServer,
    dbname: str,
    login: str,
    admin: psycopg.Connection[Any],
    users: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = users
    assert seen_by(engine, bob) == {BOB_TITLE}  # control: bob's row is there
    copy_all = union(
        "lo_from_bytea(0, convert_to(string_agg(title, '|'), 'UTF8'))::text", "'lo'"
    ).replace(" --", " from task --")
    with todo_rls.scoped_session(engine, alice) as session:
        (oid,) = [int(row[0]) for row in search(session, copy_all) if row[1] == "lo"]
        session.commit()
    try:
        with connect_app_raw(pg_server, dbname, login) as conn:  # outside any request
            copied = conn.execute("select convert_from(lo_get(%s), 'UTF8')", (oid,)).fetchone()
        assert copied == (ALICE_TITLE,)  # the channel works, and holds alice's row alone
        assert ("LO001", f"role {login}") in run_check(
            capsys, url_as(pg_server, dbname, login), login
        )
    finally:
        admin.execute("select lo_unlink(%s)", (oid,))


# --- the signing key ------------------------------------------------------------------------------


def _byte_lists(secret: bytes) -> list[str]:
    """How a plan printout (debug_print_plan) writes the first bytes of a bytea constant, as
    signed decimals, without the whitespace (it wraps lines even inside a number)."""
    head = secret[:16]
    return ["".join(str(b - 256 if b > 127 else b) for b in head), "".join(map(str, head))]


def without_whitespace(printed: list[str]) -> str:
    return re.sub(r"\s+", "", "".join(printed))


def key_material() -> list[str]:
    """The key and its HMAC blocks, as hex and as plan printouts write bytes."""
    inner, outer = SIGNING_KEY.pads()
    forms = [SIGNING_KEY.secret.hex(), inner.hex(), outer.hex()]
    return forms + [form for block in (inner, outer) for form in _byte_lists(block)]


def test_the_key_ring_is_unreadable_and_never_printed(
    engine: Engine, users: tuple[str, str]
) -> None:
    alice, _ = users
    material = key_material()
    with todo_rls.scoped_session(engine, alice) as session:
        raw = session.connection().connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        printed: list[str] = []
        raw.add_notice_handler(lambda d: printed.append(f"{d.message_primary} {d.message_detail}"))
        for probe in ("select 1 from todo_rls.signing_key", "select todo_rls.signing_key_ring()"):
            with pytest.raises(Exception, match="permission denied"), session.begin_nested():
                session.execute(text(probe))
        bodies = session.execute(
            text("select string_agg(prosrc || coalesce(proconfig::text, ''), ' ') from pg_proc")
        ).scalar_one()
        assert "current_user_id" in bodies or "signing_key" in bodies  # control: bodies read
        # Ask the server to print every plan to the client, then make the verifier plan anew.
        search(session, stacked("set debug_print_plan = on", "set client_min_messages = log",
                                "discard plans"))  # fmt: skip
        assert titles(search(session, "")) == {ALICE_TITLE}
        search(session, stacked("reset debug_print_plan", "reset client_min_messages"))
    plans = without_whitespace(printed)
    assert ":relid" in plans or "SEQSCAN" in plans or "INDEXSCAN" in plans, "control: no plan"
    assert not [form for form in material if form in plans or form in re.sub(r"\s+", "", bodies)]


def test_the_plan_printout_would_show_key_bytes_if_a_plan_held_them(
    engine: Engine, users: tuple[str, str]
) -> None:
    """The control for the test above: its byte patterns do catch a key in a printed plan."""
    alice, _ = users
    inner, _ = SIGNING_KEY.pads()
    with todo_rls.scoped_session(engine, alice) as session:
        raw = session.connection().connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        printed: list[str] = []
        raw.add_notice_handler(lambda d: printed.append(f"{d.message_primary} {d.message_detail}"))
        search(session, stacked("set debug_print_plan = on", "set client_min_messages = log"))
        key_in_query = f"convert_to(title, 'UTF8') = '\\x{inner.hex()}'::bytea"
        session.execute(text(f"select count(*) from task where {key_in_query}"))
        session.rollback()
    plans = without_whitespace(printed)
    assert any(form in plans for form in _byte_lists(inner))


# --- enumerating user ids through EXPLAIN (ADR 0011) -------------------------------------------

ID_LENGTH = 32  # Better Auth's ids, as long as the attacker's own
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
STEP = 3  # rows: the least rise in an estimate the bisection follows


class Estimates:
    """`explain select 1 from task where user_id < $1`: the estimated rows, counted, cached."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn, self.cache, self.explains = conn, dict[str, int](), 0

    def below(self, bound: str) -> int:
        if bound not in self.cache:
            self.explains += 1
            plan = self.conn.execute(
                "explain (format json) select 1 from task where user_id < %s", (bound,)
            ).fetchone()
            assert plan is not None
            self.cache[bound] = int(plan[0][0]["Plan"]["Plan Rows"])
        return self.cache[bound]


def bisect_user_ids(estimates: Estimates, alphabet: str) -> list[str]:
    """Every id whose rows the estimates show as a step of STEP rows or more (issue 11).

    The ids are the most common values ANALYZE kept: a step in the estimate of `user_id < s`
    as s passes one. Each prefix's share is the rise between its first and its last string,
    halved over the next character until it names a whole id.
    """
    top = chr(ord(alphabet[-1]) + 1)  # past every id with this prefix, in the given order
    found: list[str] = []

    def share(prefix: str, i: int, j: int) -> int:
        end = prefix + (alphabet[j] if j < len(alphabet) else top)
        return estimates.below(end) - estimates.below(prefix + alphabet[i])

    def descend(prefix: str, i: int, j: int) -> None:
        if j - i == 1:
            child = prefix + alphabet[i]
            if len(child) == ID_LENGTH:
                found.append(child)
            else:
                descend(child, 0, len(alphabet))
            return
        middle = (i + j) // 2
        for a, b in ((i, middle), (middle, j)):
            if share(prefix, a, b) >= STEP:
                descend(prefix, a, b)

    descend("", 0, len(alphabet))
    return found


@pytest.fixture
def heavy_users(admin: psycopg.Connection[Any]) -> list[str]:
    """Five users with 500 to 2,500 tasks each, twenty with 50: ANALYZE keeps the first five."""
    heavy = [create_user(admin) for _ in range(5)]
    for n, user in enumerate(heavy, start=1):
        admin.execute(
            "insert into task (user_id, title) select %s, 't' from generate_series(1, %s)",
            (user, 500 * n),
        )
    for _ in range(20):
        admin.execute(
            "insert into task (user_id, title) select %s, 't' from generate_series(1, 50)",
            (create_user(admin),),
        )
    return heavy


@pytest.mark.own_database  # migrates down and up again
def test_explain_estimates_name_no_user_id_after_revision_9a4c6e8b2d10(
    pg_server: PgServer, dbname: str, connect_app: AppConnector, admin: psycopg.Connection[Any],
    heavy_users: list[str],
) -> None:  # fmt: skip
    owner_url = url_as(pg_server, dbname)
    me = create_user(admin)

    def attack() -> tuple[list[str], int, int]:
        """(ids bisected, EXPLAINs it took, bob's equality estimate minus an unknown id's)."""
        admin.execute("analyze task")
        with connect_app() as conn, conn.transaction(force_rollback=True):
            scope_to(conn, me)
            assert conn.execute("select count(*) from task").fetchone() == (0,)
            # The attacker sorts its alphabet as the column's collation does.
            alphabet = conn.execute(
                "select string_agg(c, '' order by c collate \"default\")"
                " from regexp_split_to_table(%s, '') c",
                (ID_ALPHABET,),
            ).fetchone()
            assert alphabet is not None
            estimates = Estimates(conn)
            found = bisect_user_ids(estimates, alphabet[0])
            one = "explain (format json) select 1 from task where user_id = %s"
            known, unknown = (
                conn.execute(one, (u,)).fetchone() for u in (heavy_users[-1], new_user_id())
            )
            assert known is not None and unknown is not None
            rows = [plan[0][0]["Plan"]["Plan Rows"] for plan in (known, unknown)]
            return found, estimates.explains, rows[0] - rows[1]

    # Before: at the revision below, with user_id's statistics, bisection names the five.
    todo_rls.migrate.downgrade(owner_url, "eb55c0c808a9")
    found, explains, difference = attack()
    assert sorted(found) == sorted(heavy_users) and difference > 1000, (found, explains)
    # After: the migration removes the statistics ANALYZE kept, and ANALYZE keeps no new ones.
    todo_rls.migrate.upgrade(owner_url)
    assert admin.execute(
        "select count(*) from pg_statistic where starelid = 'task'::regclass"
        " and staattnum = (select attnum from pg_attribute"
        "                  where attrelid = 'task'::regclass and attname = 'user_id')"
    ).fetchone() == (0,)
    found, explains, difference = attack()
    assert (found, difference) == ([], 0), explains


# --- a migration that falls back to the bare setting is caught ---------------------------------


@pytest.mark.own_database  # re-creates a policy
def test_a_policy_keyed_on_the_bare_setting_lets_the_injection_through_and_is_found(
    engine: Engine,
    pg_server: PgServer,
    dbname: str,
    login: str,
    admin: psycopg.Connection[Any],
    users: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The mutant the attacks above must catch: task_select as it was before ADR 0008."""
    alice, bob = users
    admin.execute(f"alter policy task_select on task using ({FORGEABLE_OWNER_MATCHES})")
    with todo_rls.scoped_session(engine, alice) as session:
        search(session, union(*set_context(bob, "''", True)))
        leaked = titles(search(session, ""))
    assert leaked == {BOB_TITLE}  # the bare id is enough: the suite's attacks would fail
    found = run_check(capsys, url_as(pg_server, dbname, login), login)
    assert ("POL007", "public.task") in found


# --- accepted: what the login can still do to itself (specs/threat-model.md) -------------------


def test_a_login_can_change_its_own_password_and_end_its_own_sessions(
    engine: Engine,
    admin: psycopg.Connection[Any],
    login: str,
    users: tuple[str, str],
    connect_app: AppConnector,
) -> None:
    """Denial of service, not a leak: RLS governs rows, not the role's own attributes."""
    alice, _ = users
    password = "select rolpassword from pg_authid where rolname = %s"
    before = admin.execute(password, (login,)).fetchone()
    other = connect_app(login, autocommit=True)  # another session of the same login
    other_pid = other.execute("select pg_backend_pid()").fetchone()
    with todo_rls.scoped_session(engine, alice) as session:
        ended = search(
            session,
            union("pg_terminate_backend(pid)::text", "'ended'").replace(
                " --", f" from pg_stat_activity where pid = {other_pid[0] if other_pid else 0} --"
            ),
        )
        assert ("true", "ended") in ended
        search(session, stacked("alter role current_user password 'chosen by the attacker'"))
        session.commit()
    assert other.closed or other.broken or _is_gone(other)
    # Locked out wherever the server asks for passwords (this test server trusts loopback).
    assert admin.execute(password, (login,)).fetchone() != before


def _is_gone(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("select 1")
    except psycopg.OperationalError:
        return True
    return False


def test_a_statement_timeout_the_login_sets_on_itself_breaks_requests_and_is_found(
    engine: Engine,
    pg_server: PgServer,
    dbname: str,
    login: str,
    admin: psycopg.Connection[Any],
    users: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = users
    with todo_rls.scoped_session(engine, alice) as session:
        search(session, stacked("alter role current_user set statement_timeout = 1"))
        session.commit()
    engine.dispose()
    # RESET ALL restores a role default: every statement of every request now gets 1 ms.
    broken = 0
    for _ in range(5):
        try:
            with todo_rls.scoped_session(engine, bob) as session:
                session.execute(text("select pg_sleep(0.01)"))
        except DBAPIError as error:
            # 57014. PostgreSQL words it "statement timeout", or "user request" when the 1 ms
            # timer fires between two statements of the request (seen with the databases on tmpfs).
            assert isinstance(error.orig, psycopg.errors.QueryCanceled), error
            broken += 1
    assert broken == 5
    # Checked as the owner: the login's own connections get the 1 ms too.
    assert ("SET003", f"role {login}") in run_check(capsys, url_as(pg_server, dbname), login)
    admin.execute(sql.SQL("alter role {} reset statement_timeout").format(sql.Identifier(login)))
    engine.dispose()
    assert seen_by(engine, bob) == {BOB_TITLE}  # the operational answer works


# --- session state an injection leaves for the next request ------------------------------------


@pytest.mark.parametrize("role_default", [None, "repeatable read"], ids=["server's", "role's"])
def test_a_default_isolation_level_left_on_a_connection_does_not_reach_the_next_request(
    role_default: str | None,
    engine: Engine,
    users: tuple[str, str],
    login: str,
    admin: psycopg.Connection[Any],
) -> None:
    """BEGIN fixes the level before begin_scope's RESET ALL runs, so a session-level default
    left by alice's injection would make bob's next request serializable (serialization
    failures, not a leak); every BEGIN after a connection's first names the level the role,
    database or server gives it, and a level an administrator set on the role is kept."""
    if role_default is not None:  # before the engine's one connection opens
        admin.execute(
            sql.SQL("alter role {} set default_transaction_isolation = {}").format(
                sql.Identifier(login), sql.Literal(role_default)
            )
        )
    alice, bob = users
    level = text("select current_setting('transaction_isolation')")
    with todo_rls.scoped_session(engine, bob) as session:
        before = session.execute(level).scalar_one()  # control: the role's or server's default
    assert before == (role_default or "read committed")
    with todo_rls.scoped_session(engine, alice) as session:
        search(session, stacked("set default_transaction_isolation = 'serializable'"))
        shown = session.execute(text("show default_transaction_isolation")).scalar_one()
        assert shown == "serializable"  # control: the injection took
        session.commit()
    with todo_rls.scoped_session(engine, bob) as session:
        assert session.execute(level).scalar_one() == before
    with engine.connect() as conn:  # an unscoped transaction after it too
        assert conn.execute(level).scalar_one() == before


@pytest.mark.parametrize("next_request", ["scoped", "unscoped"])
@pytest.mark.parametrize("stash", ["temp table", "cursor with hold"])
def test_nothing_made_in_one_request_carries_its_rows_to_the_next(
    stash: str, next_request: str, engine: Engine, users: tuple[str, str]
) -> None:
    """A temp table or a WITH HOLD cursor made by SQL injected into alice's request (a
    second-order injection, say) holds her rows; begin_scope drops both before the next
    transaction on the connection runs anything (revision c3e8f1a7b254)."""
    alice, bob = users
    make, read, gone = {
        "temp table": (
            "create temp table loot as select title from public.task",
            "select title from pg_temp.loot",
            psycopg.errors.UndefinedTable,
        ),
        "cursor with hold": (
            "declare loot cursor with hold for select title from public.task",
            "fetch all from loot",
            psycopg.errors.InvalidCursorName,
        ),
    }[stash]
    assert seen_by(engine, bob) == {BOB_TITLE}  # control: bob's own request sees only his
    with todo_rls.scoped_session(engine, alice) as session:
        search(session, stacked(make))
        # control: the stash holds alice's rows within her own transaction
        assert ALICE_TITLE in {row[0] for row in session.execute(text(read)).all()}
        session.commit()
    with (
        todo_rls.scoped_session(engine, bob) if next_request == "scoped" else Session(engine)
    ) as session:
        with pytest.raises(DBAPIError) as refused:
            session.execute(text(read)).all()
        assert isinstance(refused.value.orig, gone)
