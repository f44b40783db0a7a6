"""The signed context: the database's HMAC is HMAC-SHA256, keys rotate, a retired key is refused
at once even by a connection that cached the key ring, and every refusal names its reason."""

import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

import todo_rls
from todo_rls import ContextRejectedError, keys
from todo_rls.cli import main
from todo_rls.engine import EngineSettings
from todo_rls.errors import SigningKeyError
from todo_rls.identity import KEY_ENV, SigningKey, hmac_pads

from fix_db import SIGNING_KEY, url_as
from fix_server import PgServer

# RFC 4231, HMAC-SHA-256: (key, data, mac). Cases 6 and 7 have keys longer than a block.
RFC_4231 = {
    "case 1": (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    "case 2": (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    "case 3": (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    "case 4": (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    "case 6": (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    "case 7": (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
}
# The verifier's HMAC, from the stored pads, with the built-in sha256().
DATABASE_HMAC = (
    "select pg_catalog.encode(sha256(%(outer)s || sha256(%(inner)s || %(data)s)), 'hex')"
)
VISIBLE = text("select count(*) from task")


@pytest.mark.parametrize("case", RFC_4231)
def test_the_databases_hmac_is_hmac_sha256(case: str, admin: psycopg.Connection[Any]) -> None:
    key, data, expected = RFC_4231[case]
    inner, outer = hmac_pads(key)
    row = admin.execute(DATABASE_HMAC, {"inner": inner, "outer": outer, "data": data}).fetchone()
    assert row == (expected,)


@pytest.fixture
def one_connection_engine(app_url: str) -> Iterator[Engine]:
    """The app's engine with exactly one pooled connection: every session reuses its cache."""
    engine = todo_rls.create_engine(app_url, EngineSettings(pool_size=1, max_overflow=0))
    yield engine
    engine.dispose()


def visible_tasks(engine: Engine, user_id: str, key: SigningKey) -> tuple[int, int]:
    """(tasks the user's scoped session sees, the backend's pid)."""
    with todo_rls.scoped_session(engine, user_id, signing_key=key) as session:
        connection = session.connection()
        pid = connection.execute(text("select pg_backend_pid()")).scalar_one()
        return connection.execute(VISIBLE).scalar_one(), pid


@pytest.fixture
def alice_with_a_task(admin: psycopg.Connection[Any], alice: str) -> str:
    admin.execute("insert into task (user_id, title) values (%s, 'alice''s')", (alice,))
    return alice


@pytest.mark.own_database
@pytest.mark.parametrize("size", [32, 64, 131], ids=["32 bytes", "one block", "longer"])
def test_a_key_of_any_size_from_32_bytes_verifies(
    size: int, admin: psycopg.Connection[Any], app_engine: Engine, alice_with_a_task: str
) -> None:
    key = SigningKey(os.urandom(size))
    keys.add(admin, key)
    assert visible_tasks(app_engine, alice_with_a_task, key)[0] == 1


@pytest.mark.own_database
def test_rotation_a_connection_that_cached_the_ring_takes_a_new_key_and_drops_a_retired_one(
    admin: psycopg.Connection[Any], one_connection_engine: Engine, alice_with_a_task: str
) -> None:
    engine, alice = one_connection_engine, alice_with_a_task
    seen, pid = visible_tasks(engine, alice, SIGNING_KEY)  # the connection caches the ring
    assert seen == 1  # positive control
    new = SigningKey(os.urandom(32))
    keys.add(admin, new)
    assert visible_tasks(engine, alice, new) == (1, pid)  # the same backend, the new key
    assert visible_tasks(engine, alice, SIGNING_KEY) == (1, pid)  # both during the overlap
    keys.retire(admin, SIGNING_KEY.key_id, timedelta(0))
    with pytest.raises(
        ContextRejectedError, match=f"signed with key {SIGNING_KEY.key_id}, retired"
    ):
        visible_tasks(engine, alice, SIGNING_KEY)
    assert visible_tasks(engine, alice, new) == (1, pid)


@pytest.mark.own_database
def test_a_key_retired_with_an_overlap_is_accepted_until_then(
    admin: psycopg.Connection[Any], app_engine: Engine, alice_with_a_task: str
) -> None:
    keys.add(admin, SigningKey(os.urandom(32)))
    at = keys.retire(admin, SIGNING_KEY.key_id, timedelta(minutes=10))
    assert visible_tasks(app_engine, alice_with_a_task, SIGNING_KEY)[0] == 1
    listed = {key.key_id: key for key in keys.installed(admin)}
    assert listed[SIGNING_KEY.key_id].retire_at == at


def test_the_only_active_key_cannot_be_retired(admin: psycopg.Connection[Any]) -> None:
    with pytest.raises(keys.KeyAdminError, match="only active key: add its successor first"):
        keys.retire(admin, SIGNING_KEY.key_id, timedelta(0))
    assert [key.retire_at for key in keys.installed(admin)] == [None]


def test_repeatable_read_verifies_without_the_cached_ring(
    admin: psycopg.Connection[Any], app_engine: Engine, alice_with_a_task: str
) -> None:
    engine = app_engine.execution_options(isolation_level="REPEATABLE READ")
    with todo_rls.scoped_session(engine, alice_with_a_task) as session:
        connection = session.connection()
        mode = connection.execute(text("select current_setting('transaction_isolation')"))
        assert mode.scalar_one() == "repeatable read"
        assert connection.execute(VISIBLE).scalar_one() == 1
        connection.execute(text("select set_config('app.user_id', 'someone else', true)"))
        with pytest.raises(ContextRejectedError, match=r"does not match app\.user_id"):
            connection.execute(VISIBLE)


def test_an_expired_context_is_refused_naming_the_clocks(
    app_engine: Engine, alice_with_a_task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert visible_tasks(app_engine, alice_with_a_task, SIGNING_KEY)[0] == 1  # control
    an_hour_ago = time.time() - 3600
    monkeypatch.setattr(time, "time", lambda: an_hour_ago)  # identity.py reads time.time()
    with pytest.raises(ContextRejectedError, match=r"expired at .* check that the app's and"):
        visible_tasks(app_engine, alice_with_a_task, SIGNING_KEY)


@pytest.mark.own_database
def test_without_an_installed_key_scoped_work_fails_naming_keys_add(
    admin: psycopg.Connection[Any], app_engine: Engine, alice_with_a_task: str
) -> None:
    assert visible_tasks(app_engine, alice_with_a_task, SIGNING_KEY)[0] == 1  # control
    admin.execute("delete from todo_rls.signing_key")
    with pytest.raises(ContextRejectedError, match=r"no signing key is installed.*keys add"):
        visible_tasks(app_engine, alice_with_a_task, SIGNING_KEY)


def test_a_key_the_database_does_not_hold_is_refused_naming_it(
    app_engine: Engine, alice_with_a_task: str
) -> None:
    stranger = SigningKey(os.urandom(32))
    with pytest.raises(
        ContextRejectedError, match=f"key {stranger.key_id}, which is not installed"
    ):
        visible_tasks(app_engine, alice_with_a_task, stranger)


def engine_at_a_freed_engines_address(url: str, kept: list[object]) -> Engine:
    """A new engine made where an earlier engine was freed while its dialect lived on (kept,
    as a traceback kept by pytest or a logger would keep it)."""
    addresses: set[int] = set()
    for _ in range(5_000):
        engine = todo_rls.create_engine(url)  # connects to nothing yet
        if id(engine) in addresses:
            return engine
        addresses.add(id(engine))
        kept.append(engine.dialect)
    pytest.fail("CPython never reused a freed engine's address")


def test_an_engine_at_a_freed_engines_address_still_names_a_refused_context(
    app_url: str, alice_with_a_task: str
) -> None:
    # SQLAlchemy registers a listener under (id(target), event, id(fn)) and forgets it when the
    # listener's collection goes. handle_error's collection is the dialect's: installed through
    # the engine, its key outlived an engine whose dialect lived on, and a new engine at the same
    # address looked installed already (seen as a flaky test_injection.py).
    kept: list[object] = []
    engine = engine_at_a_freed_engines_address(app_url, kept)
    try:
        assert visible_tasks(engine, alice_with_a_task, SIGNING_KEY)[0] == 1  # control
        stranger = SigningKey(os.urandom(32))
        with pytest.raises(ContextRejectedError, match=f"key {stranger.key_id}, which is not"):
            visible_tasks(engine, alice_with_a_task, stranger)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", f"{KEY_ENV} is not set"),
        ("not hex", "is not hexadecimal; generate a key with: todo-rls keys generate"),
        ("ab" * 31, "holds 31 bytes; a signing key needs at least 32"),
    ],
    ids=["unset", "not hex", "too short"],
)
def test_a_missing_or_bad_key_is_refused_before_a_connection_is_taken(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch, alice: str
) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    engine = todo_rls.create_engine("postgresql://nobody@127.0.0.1:1/none")  # never connected
    with pytest.raises(SigningKeyError, match=message), todo_rls.scoped_session(engine, alice):
        pass


@pytest.mark.own_database
def test_keys_cli_lists_adds_and_retires_as_the_owner(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pg_server: PgServer,
    dbname: str,
) -> None:
    owner_url = url_as(pg_server, dbname)

    def listed() -> dict[str, str]:
        assert main(["keys", "list", "--url", owner_url, "--json"]) == 0
        return {k["key_id"]: k["status"] for k in json.loads(capsys.readouterr().out)["keys"]}

    assert listed() == {SIGNING_KEY.key_id: "active"}
    assert main(["keys", "generate"]) == 0
    new_hex = capsys.readouterr().out.strip()
    new = SigningKey.from_hex(new_hex)
    monkeypatch.setenv(KEY_ENV, new_hex)
    assert main(["keys", "add", "--url", owner_url]) == 0
    assert f"key {new.key_id} installed" in capsys.readouterr().out
    assert main(["keys", "retire", SIGNING_KEY.key_id, "--in", "0s", "--url", owner_url]) == 0
    capsys.readouterr()
    assert listed() == {SIGNING_KEY.key_id: "retired", new.key_id: "active"}


def test_keys_cli_as_the_app_login_is_refused_naming_the_owner(
    capsys: pytest.CaptureFixture[str], app_url: str
) -> None:
    assert main(["keys", "list", "--url", app_url]) == 2
    assert "run todo-rls keys as the role that applied the migrations" in capsys.readouterr().err
