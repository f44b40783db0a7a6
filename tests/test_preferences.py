"""todo_rls.preferences as the application role: defaults, upsert, reset, bad input, isolation."""

from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from todo_rls import InvalidInputError, scoped_session
from todo_rls import preferences as prefs
from todo_rls.models import UserPreference

from fix_db import APP_LOGIN, AppConnector, create_user, scope_to
from fix_world import insert_statement

DEFAULTS = {"theme": "system", "language": "en", "notify_email": True, "notify_push": False}


def settings(row: UserPreference) -> dict[str, Any]:
    """The four settings of a preferences row."""
    return {key: getattr(row, key) for key in DEFAULTS}


def saved_rows(admin: psycopg.Connection[Any], *users: str) -> list[tuple[Any, ...]]:
    """The preferences rows of users (read as the superuser, only to check what was written;
    the database is shared, so other tests' users have rows too)."""
    return admin.execute(
        "select user_id, theme, language, notify_email, notify_push from user_preference"
        " where user_id = any(%s) order by user_id",
        (list(users),),
    ).fetchall()


def test_get_without_a_saved_row_returns_the_defaults_and_writes_nothing(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        role = session.connection().exec_driver_sql("select current_user::text").scalar()
        assert role == APP_LOGIN
        row = prefs.get(session)
        assert (row.user_id, settings(row), row.created_at) == (alice, DEFAULTS, None)
        session.commit()
    assert saved_rows(admin, alice) == []


def test_first_update_inserts_the_defaults_plus_the_given_fields(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        row = prefs.update(session, theme="dark")
        assert settings(row) == DEFAULTS | {"theme": "dark"}
        assert row.created_at is not None and row.created_at == row.updated_at
        session.commit()
    assert saved_rows(admin, alice) == [(alice, "dark", "en", True, False)]


def test_later_updates_change_only_the_given_fields_and_bump_updated_at(
    app_engine: Engine, alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        first = prefs.update(session, theme="dark", language="pt-BR")
        created, updated = first.created_at, first.updated_at
        session.commit()
    with scoped_session(app_engine, alice) as session:
        row = prefs.update(session, notify_push=True)
        assert settings(row) == DEFAULTS | {"theme": "dark", "language": "pt-BR"} | {
            "notify_push": True
        }
        assert row.created_at == created
        assert updated is not None and row.updated_at is not None and row.updated_at > updated
        latest = row.updated_at
        session.commit()
    with scoped_session(app_engine, alice) as session:
        assert settings(prefs.get(session))["notify_push"] is True
        assert prefs.update(session).updated_at == latest  # nothing given: only a read


def test_reset_brings_back_the_defaults(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        prefs.update(session, theme="light", notify_email=False)
        session.commit()
    assert len(saved_rows(admin, alice)) == 1  # positive control
    with scoped_session(app_engine, alice) as session:
        prefs.reset(session)
        assert settings(prefs.get(session)) == DEFAULTS
        session.commit()
    assert saved_rows(admin, alice) == []


BAD_INPUT: dict[str, tuple[dict[str, Any], str]] = {
    "unknown theme": ({"theme": "blue"}, "theme must be one of system, light, dark; not 'blue'"),
    "theme in capitals": ({"theme": "Dark"}, "theme must be one of"),
    "theme not a str": ({"theme": None}, "theme must be one of"),
    "language with underscore": ({"language": "en_US"}, "language must be 2 or 3 lower-case"),
    "language in capitals": ({"language": "EN"}, "language must be"),
    "language with script": ({"language": "zh-Hans"}, "language must be"),
    "language with trailing newline": ({"language": "en\n"}, "language must be"),
    "language not a str": ({"language": 7}, "language must be a str, not int"),
    "language with NUL": ({"language": "e\x00n"}, "language contains a NUL"),
    "notify_email not a bool": ({"notify_email": "yes"}, "notify_email must be True or False"),
    "notify_push as int": ({"notify_push": 1}, "notify_push must be True or False"),
}


@pytest.mark.parametrize(("values", "message"), BAD_INPUT.values(), ids=BAD_INPUT)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    values: dict[str, Any],
    message: str,
    app_engine: Engine,
    admin: psycopg.Connection[Any],
    alice: str,
) -> None:
    with scoped_session(app_engine, alice) as session:
        with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
            # A valid field alongside: the whole update is refused, not half applied.
            valid = {"theme": "dark"} if "theme" not in values else {"notify_email": False}
            prefs.update(session, **valid, **values)
        session.commit()
    assert saved_rows(admin, alice) == []


# The library's rules must refuse exactly what the CHECK constraints refuse.
LANGUAGES = ["en", "fil", "pt-BR", "en-US", "e", "engl", "EN", "en-us", "en_US", "es-419", "é"]
THEMES = ["system", "light", "dark", "", "Dark", "blue", " dark"]


@pytest.mark.parametrize(("column", "values"), [("language", LANGUAGES), ("theme", THEMES)])
def test_library_rules_match_the_schema_checks(
    column: str, values: list[str], connect_app: AppConnector, alice: str
) -> None:
    check = prefs.check_language if column == "language" else prefs.check_theme
    verdicts = []
    with connect_app() as conn, conn.transaction(force_rollback=True):
        scope_to(conn, alice)
        for value in values:
            try:
                check(value)
                library = True
            except InvalidInputError:
                library = False
            row = {"user_id": alice, column: value}
            try:
                with conn.transaction():  # savepoint: each value alone, rolled back after
                    conn.execute(insert_statement("user_preference", row), row)
                    conn.execute("delete from user_preference")
                schema = True
            except psycopg.errors.CheckViolation:
                schema = False
            verdicts.append((value, library, schema))
    assert [v for v in verdicts if v[1] != v[2]] == []
    # Positive control: both accept and refuse something, so neither side is constant.
    assert {library for _, library, _ in verdicts} == {True, False}


# --- isolation, as the application role ----------------------------------------------------


def test_another_user_reads_defaults_and_cannot_change_or_reset_the_owners_row(
    app_engine: Engine, admin: psycopg.Connection[Any], alice: str, bob: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        prefs.update(session, theme="dark", language="fil")
        session.commit()
    with scoped_session(app_engine, alice) as session:  # positive control: alice sees hers
        assert settings(prefs.get(session)) == DEFAULTS | {"theme": "dark", "language": "fil"}
    with scoped_session(app_engine, bob) as session:
        assert settings(prefs.get(session)) == DEFAULTS
        assert prefs.update(session, theme="light").user_id == bob
        prefs.reset(session)
        session.commit()
    assert saved_rows(admin, alice, bob) == [(alice, "dark", "fil", True, False)]


def upsert_claiming(conn: psycopg.Connection[Any], actor: str, owner: str) -> psycopg.Error | None:
    """As actor, upsert a preferences row claiming owner's id; the error, if refused."""
    row = {"user_id": owner, "theme": "dark"}
    upsert = insert_statement("user_preference", row, upsert=True)
    try:
        with conn.transaction(force_rollback=True):
            scope_to(conn, actor)
            conn.execute(upsert, row)
            return None
    except psycopg.Error as error:
        return error


def test_upsert_over_another_users_row_is_refused_whether_or_not_the_row_exists(
    app_engine: Engine,
    admin: psycopg.Connection[Any],
    connect_app: AppConnector,
    alice: str,
    bob: str,
) -> None:
    carol = create_user(admin)  # has no preferences row
    with scoped_session(app_engine, alice) as session:
        prefs.update(session, theme="light")
        session.commit()
    conn = connect_app()
    assert upsert_claiming(conn, bob, bob) is None  # positive control: bob's own upsert works
    assert upsert_claiming(conn, alice, alice) is None  # and alice's, over her existing row
    over_existing, over_missing = (
        upsert_claiming(conn, bob, alice),
        upsert_claiming(conn, bob, carol),
    )
    assert isinstance(over_existing, psycopg.errors.InsufficientPrivilege)
    assert isinstance(over_missing, psycopg.errors.InsufficientPrivilege)
    # The insert's WITH CHECK refuses before the conflict is looked for: the two refusals read
    # the same, so the upsert does not tell bob whether alice saved preferences.
    assert str(over_existing) == str(over_missing)
    assert 'row-level security policy for table "user_preference"' in str(over_existing)
    assert saved_rows(admin, alice, bob, carol) == [(alice, "light", "en", True, False)]


def test_unscoped_transaction_reads_nothing_and_cannot_save(
    app_engine: Engine, connect_app: AppConnector, alice: str
) -> None:
    with scoped_session(app_engine, alice) as session:
        prefs.update(session, theme="dark")
        session.commit()
    conn = connect_app()
    with conn.transaction(force_rollback=True):  # positive control: scoped, alice sees it
        scope_to(conn, alice)
        assert conn.execute("select theme from user_preference").fetchall() == [("dark",)]
    with conn.transaction(force_rollback=True):  # this connection's GUC now reads ''
        assert conn.execute("select theme from user_preference").fetchall() == []
        row = {"user_id": alice, "theme": "light"}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(insert_statement("user_preference", row, upsert=True), row)
