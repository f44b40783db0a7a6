"""Settings from the environment: typed defaults, TODO_RLS_* overrides, errors naming the fix."""

import os

import pytest
from sqlalchemy.pool import QueuePool

import todo_rls
from todo_rls.engine import EngineSettings
from todo_rls.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DATABASE_URL or TODO_RLS_* variable of the shell running the tests leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("TODO_RLS_") or name.upper() == "DATABASE_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_match_engine_settings() -> None:
    settings = load_settings()
    defaults = EngineSettings()
    assert settings.database_url is None
    assert settings.set_role is None
    assert settings.pgbouncer_flag is None  # auto: detect Neon's -pooler host
    assert EngineSettings.from_env() == defaults
    for field in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pre_ping"):
        assert getattr(settings, field) == getattr(defaults, field), field


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "DATABASE_URL": "postgresql://app@db.example.test/todo",
        "TODO_RLS_POOL_SIZE": "12",
        "TODO_RLS_MAX_OVERFLOW": "0",
        "TODO_RLS_POOL_TIMEOUT": "2.5",
        "TODO_RLS_POOL_RECYCLE": "60",
        "TODO_RLS_PRE_PING": "false",
        "TODO_RLS_CONNECT_TIMEOUT": "30",
        "TODO_RLS_CONNECT_ATTEMPTS": "8",
        "TODO_RLS_MAX_BACKOFF": "1.5",
        "TODO_RLS_PGBOUNCER": "On",
        "TODO_RLS_SET_ROLE": "todo_app",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == Settings(
        database_url="postgresql://app@db.example.test/todo",
        pool_size=12,
        max_overflow=0,
        pool_timeout=2.5,
        pool_recycle=60,
        pre_ping=False,
        connect_timeout=30,
        connect_attempts=8,
        max_backoff=1.5,
        pgbouncer="on",
        set_role="todo_app",
    )
    assert EngineSettings.from_env() == EngineSettings(
        pgbouncer=True,
        pool_size=12,
        max_overflow=0,
        pool_timeout=2.5,
        pool_recycle=60,
        pre_ping=False,
        connect_timeout=30,
        connect_attempts=8,
        max_backoff=1.5,
    )


@pytest.mark.parametrize(("mode", "flag"), [("auto", None), ("on", True), ("OFF", False)])
def test_pgbouncer_modes(monkeypatch: pytest.MonkeyPatch, mode: str, flag: bool | None) -> None:
    monkeypatch.setenv("TODO_RLS_PGBOUNCER", mode)
    assert EngineSettings.from_env().pgbouncer is flag


def test_empty_variables_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TODO_RLS_POOL_SIZE", "")
    monkeypatch.setenv("DATABASE_URL", "")
    assert load_settings().pool_size == 5
    with pytest.raises(todo_rls.DatabaseUrlError, match="DATABASE_URL is not set"):
        todo_rls.database_url()


def test_database_url_has_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI and migrations/env.py read DATABASE_URL too; a second name would split them.
    monkeypatch.setenv("TODO_RLS_DATABASE_URL", "postgresql://app@db.example.test/todo")
    assert load_settings().database_url is None
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.example.test/todo")
    assert todo_rls.database_url().host == "db.example.test"


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("TODO_RLS_POOL_SIZE", "ten", "an integer from 1 to 1000"),
        ("TODO_RLS_POOL_SIZE", "0", "an integer from 1 to 1000"),
        ("TODO_RLS_MAX_OVERFLOW", "-1", "an integer from 0 to 1000"),
        ("TODO_RLS_POOL_TIMEOUT", "0", "seconds, more than 0 and at most 3600"),
        ("TODO_RLS_POOL_RECYCLE", "1.5", "seconds, an integer from 1 to 86400"),
        ("TODO_RLS_PRE_PING", "maybe", "true or false"),
        ("TODO_RLS_CONNECT_TIMEOUT", "1", "seconds, an integer from 2 to 600"),
        ("TODO_RLS_CONNECT_ATTEMPTS", "0", "an integer from 1 to 100"),
        ("TODO_RLS_MAX_BACKOFF", "-5", "seconds, more than 0 and at most 300"),
        ("TODO_RLS_PGBOUNCER", "sometimes", "auto, on or off"),
        ("TODO_RLS_SET_ROLE", " todo_app", "a role name such as todo_app"),
        ("TODO_RLS_SET_ROLE", "r" * 64, "a role name such as todo_app"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed: str
) -> None:
    monkeypatch.setenv(variable, value)
    expected = f"{variable}={value!r} is not valid"
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert f"allowed: {allowed}" in str(raised.value)
    assert isinstance(raised.value, todo_rls.TodoRlsError)
    # The engines read the same settings, so they refuse the same way.
    with pytest.raises(SettingsError, match=variable):
        todo_rls.create_engine("postgresql://app@db.example.test/todo")


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TODO_RLS_POOL_SIZE", "x")
    monkeypatch.setenv("TODO_RLS_PGBOUNCER", "y")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "TODO_RLS_POOL_SIZE='x'" in str(raised.value)
    assert "TODO_RLS_PGBOUNCER='y'" in str(raised.value)


async def test_engines_take_their_defaults_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TODO_RLS_POOL_SIZE", "3")
    monkeypatch.setenv("TODO_RLS_POOL_TIMEOUT", "4.5")
    monkeypatch.setenv("TODO_RLS_PGBOUNCER", "on")
    url = "postgresql://app@db.example.test/todo"
    engine = todo_rls.create_engine(url)
    async_engine = todo_rls.create_async_engine(url)
    explicit = todo_rls.create_engine(url, EngineSettings())
    try:
        for pool in (engine.pool, async_engine.pool):
            assert isinstance(pool, QueuePool)
            assert (pool.size(), pool.timeout()) == (3, 4.5)
        # An explicit EngineSettings wins over the environment, field for field.
        assert isinstance(explicit.pool, QueuePool)
        assert explicit.pool.size() == EngineSettings().pool_size
    finally:
        engine.dispose()
        explicit.dispose()
        await async_engine.dispose()
