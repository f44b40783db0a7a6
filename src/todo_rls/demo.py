"""`todo-rls demo`: alice and bob write through scoped sessions, then each claim is checked.

The admin URL sets the stage (Better Auth's table, migrations, a login role, two users); every
claim is then checked through that login role, which row-level security binds. The role is the
run's own (todo_rls_demo_app_<pid>_<hex>, random password) and is dropped when the demo ends.
"""

import os
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import URL, Engine, func, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from todo_rls import keys, migrate

# Re-exported ("as"): its home is todo_rls.better_auth; older imports from here keep working.
from todo_rls.better_auth import BETTER_AUTH_USER_DDL as BETTER_AUTH_USER_DDL
from todo_rls.engine import create_engine, database_url
from todo_rls.errors import ContextRejectedError, DatabaseUnavailableError, TodoRlsError
from todo_rls.identity import SigningKey
from todo_rls.models import Conversation, Message, Task
from todo_rls.session import APP_ROLE, scoped_session

# The prefix of each run's login role; the role itself is dropped at the end of the run.
DEMO_ROLE = "todo_rls_demo_app"


_ROLE_FACTS = text(
    "select current_user::text, r.rolsuper, r.rolbypassrls,"
    " pg_catalog.row_security_active('public.task')"
    " from pg_catalog.pg_roles r where r.rolname = current_user"
)
_UNFILTERED = "select * from task"
_EDIT_TASK = text("update task set title = title || ' (edited)' where id = :id")


class DemoError(TodoRlsError):
    """The demo cannot set itself up on this server; the message says what to fix."""


@dataclass(frozen=True)
class DemoUser:
    """A demo user (fixed id, so re-runs replace rather than add) and what they write."""

    name: str
    pronoun: str
    id: str
    tasks: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]


ALICE = DemoUser(
    name="alice",
    pronoun="her",
    id="todoRlsDemoAlice0000000000000000",
    tasks=("Buy oat milk", "Book the dentist"),
    messages=(("user", "What is due this week?"), ("assistant", "The dentist, then oat milk.")),
)
BOB = DemoUser(
    name="bob",
    pronoun="his",
    id="todoRlsDemoBob000000000000000000",
    tasks=("Renew passport",),
    messages=(("user", "Where should I go in May?"),),
)


@dataclass(frozen=True)
class Written:
    """What one demo user wrote: the ids the claims check against."""

    user: DemoUser
    task_ids: tuple[uuid.UUID, ...]
    conversation_id: uuid.UUID


@dataclass(frozen=True)
class Claim:
    """One checked sentence of the demo's output."""

    text: str
    held: bool


def _step(label: str, detail: str) -> None:
    print(f"  {label:<13} {detail}")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def _admin_connect(url: URL) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            url.set(drivername="postgresql").render_as_string(hide_password=False),
            autocommit=True,
            connect_timeout=10,
        )
    except psycopg.OperationalError as error:
        raise DatabaseUnavailableError(f"could not connect with the admin URL: {error}") from error


def _require_admin(conn: psycopg.Connection[Any]) -> None:
    """Refuse before writing anything when the URL's role cannot create the demo's role."""
    row = conn.execute(
        "select current_user::text, rolsuper or rolcreaterole"
        " from pg_catalog.pg_roles where rolname = current_user"
    ).fetchone()
    if row is None or not row[1]:
        who = row[0] if row else "this role"
        raise DemoError(
            f"role {who} cannot create roles: pass an admin URL (a superuser, or the "
            "database owner with CREATEROLE), not the application's URL"
        )


def _ensure_user_table(conn: psycopg.Connection[Any]) -> None:
    found = conn.execute("select pg_catalog.to_regclass('public.\"user\"')").fetchone()
    if found is not None and found[0] is not None:
        _step('"user" table', "already there (Better Auth's, or an earlier demo's stand-in)")
        return
    conn.execute(BETTER_AUTH_USER_DDL)
    _step('"user" table', "created with Better Auth's DDL, a stand-in for its own migration")


def _create_demo_role(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """Create this run's login role, a member of todo_app; its name and random password."""
    name = f"{DEMO_ROLE}_{os.getpid()}_{secrets.token_hex(4)}"
    role, password = sql.Identifier(name), secrets.token_urlsafe(24)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("create role {} login nosuperuser nobypassrls password {}").format(
                    role, sql.Literal(password)
                )
            )
            conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(APP_ROLE), role))
    except psycopg.errors.InsufficientPrivilege as error:
        raise DemoError(
            f"cannot create role {name} ({error.diag.message_primary}): "
            "pass an admin URL (a superuser or a role with CREATEROLE), not the app's URL"
        ) from error
    _step("login role", f"{name}: LOGIN, member of {APP_ROLE}, random password, dropped at the end")
    return name, password


def _drop_demo_role(admin_url: str, name: str) -> None:
    """The end of a run: its login role goes (it owns nothing; only todo_app is granted)."""
    with _admin_connect(database_url(admin_url)) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def _reset_users(conn: psycopg.Connection[Any]) -> None:
    # Deleting the users cascades to their tasks, conversations and messages: a clean re-run.
    conn.execute('delete from "user" where id = any(%s)', ([ALICE.id, BOB.id],))
    for user in (ALICE, BOB):
        conn.execute(
            'insert into "user" (id, name, email, "emailVerified") values (%s, %s, %s, true)',
            (user.id, user.name, f"{user.name}@demo.todo-rls.invalid"),
        )
    _step("users", "alice and bob (re-created, so earlier demo rows are gone)")


def _prepare(admin_url: str, key: SigningKey) -> tuple[str, str]:
    """Set the stage as the admin; the demo's login role and its URL (drop it when done)."""
    url = database_url(admin_url)
    with _admin_connect(url) as conn:
        _require_admin(conn)
        _ensure_user_table(conn)
        migrate.upgrade(admin_url)
        _step("migrations", "applied up to head")
        keys.add(conn, key)
        _step("signing key", f"{key.key_id}: random, for this run only (removed at the end)")
        _reset_users(conn)
        role, password = _create_demo_role(conn)
    # Same host, port, database and options (e.g. the socket folder): only the role changes.
    return role, url.set(username=role, password=password).render_as_string(hide_password=False)


def _write(engine: Engine, key: SigningKey, user: DemoUser) -> Written:
    """Write user's tasks and a conversation through their scoped session."""
    written = Written(user, tuple(uuid.uuid4() for _ in user.tasks), uuid.uuid4())
    with scoped_session(engine, user.id, signing_key=key) as session:
        session.add_all(
            Task(id=task_id, user_id=user.id, title=title)
            for task_id, title in zip(written.task_ids, user.tasks, strict=True)
        )
        session.add(Conversation(id=written.conversation_id, user_id=user.id, title="Assistant"))
        session.flush()  # the conversation exists before its messages point at it
        session.add_all(
            Message(
                user_id=user.id, conversation_id=written.conversation_id, role=role, content=body
            )
            for role, body in user.messages
        )
        session.commit()
    _step(
        f"{user.name} wrote",
        f"{_plural(len(user.tasks), 'task')}, 1 conversation with "
        f"{_plural(len(user.messages), 'message')} (through a scoped session)",
    )
    return written


def _role_claim(engine: Engine, key: SigningKey, login_role: str) -> Claim:
    with scoped_session(engine, ALICE.id, signing_key=key) as session:
        role, superuser, bypassrls, active = session.connection().execute(_ROLE_FACTS).one()
    facts = (
        f"(superuser: {_yes(superuser)}, bypassrls: {_yes(bypassrls)}),"
        f" row_security_active('task'): {_yes(active)}"
    )
    held = role == login_role and not superuser and not bypassrls and active is True
    return Claim(f"connected as {role} {facts}", held)


def _sees_only_own_tasks(engine: Engine, key: SigningKey, written: Written) -> Claim:
    user = written.user
    with scoped_session(engine, user.id, signing_key=key) as session:
        tasks = session.exec(select(Task)).all()
    foreign = sum(task.user_id != user.id for task in tasks)
    held = {task.id for task in tasks} == set(written.task_ids) and foreign == 0
    return Claim(
        f"{user.name} sees only {user.pronoun} {_plural(len(written.task_ids), 'task')}"
        f" (sees {len(tasks)}, {foreign} of them someone else's)",
        held,
    )


def _unscoped_claim(engine: Engine, total: int) -> Claim:
    with Session(engine) as session:
        count = session.exec(select(func.count()).select_from(Task)).one()
    return Claim(
        f"an unscoped session (plain Session, no user) sees {count} of the {total} demo tasks",
        count == 0,
    )


def _unfiltered_select_claim(engine: Engine, key: SigningKey, alice: Written) -> Claim:
    with scoped_session(engine, alice.user.id, signing_key=key) as session:
        rows = session.connection().execute(text(_UNFILTERED)).mappings().all()
    foreign = sum(row["user_id"] != alice.user.id for row in rows)
    return Claim(
        f"alice's deliberately unfiltered `{_UNFILTERED}` returns only her rows"
        f" ({len(rows)}, {foreign} someone else's)",
        len(rows) == len(alice.task_ids) and foreign == 0,
    )


def _update_claim(engine: Engine, key: SigningKey, alice: Written, bob: Written) -> Claim:
    with scoped_session(engine, alice.user.id, signing_key=key) as session:
        connection = session.connection()
        own = connection.execute(_EDIT_TASK, {"id": alice.task_ids[0]}).rowcount
        other = connection.execute(_EDIT_TASK, {"id": bob.task_ids[0]}).rowcount
        session.rollback()  # the counts are the proof; the demo keeps its data as written
    return Claim(
        f"alice cannot update bob's task: {other} rows affected (her own task: {own})",
        own == 1 and other == 0,
    )


def _refusal(
    engine: Engine, key: SigningKey, as_user: str, owner: str, conversation_id: uuid.UUID
) -> str | None:
    """Try to add a message as as_user; the error's name if refused, None if it was written."""
    with scoped_session(engine, as_user, signing_key=key) as session:
        session.add(
            Message(user_id=owner, conversation_id=conversation_id, role="user", content="hi")
        )
        try:
            session.commit()
        except DBAPIError as error:
            session.rollback()
            return type(error.orig).__name__
    return None


def _outcome(refusal: str | None) -> str:
    return f"refused ({refusal})" if refusal else "it was written"


def _message_claims(engine: Engine, key: SigningKey, alice: Written, bob: Written) -> list[Claim]:
    as_herself = _refusal(engine, key, alice.user.id, alice.user.id, bob.conversation_id)
    as_bob = _refusal(engine, key, alice.user.id, bob.user.id, bob.conversation_id)
    with scoped_session(engine, bob.user.id, signing_key=key) as session:
        count = session.exec(select(func.count()).select_from(Message)).one()
    return [
        Claim(
            f"alice cannot add a message to bob's conversation: {_outcome(as_herself)}",
            as_herself is not None,
        ),
        Claim(f"alice cannot add one posing as bob either: {_outcome(as_bob)}", as_bob is not None),
        Claim(
            f"bob still sees only his {_plural(len(bob.user.messages), 'message')} (sees {count})",
            count == len(bob.user.messages),
        ),
    ]


def _forged_context_claim(engine: Engine, key: SigningKey, alice: Written, bob: Written) -> Claim:
    """SQL run inside alice's session (an injection) claims to be bob."""
    with scoped_session(engine, alice.user.id, signing_key=key) as session:
        connection = session.connection()
        connection.execute(
            text("select pg_catalog.set_config('app.user_id', :bob, true)"), {"bob": bob.user.id}
        )
        try:
            seen = len(connection.execute(text(_UNFILTERED)).all())
            outcome = f"it read {_plural(seen, 'row')}"
        except ContextRejectedError:
            seen, outcome = 0, "refused (ContextRejectedError: the signature does not match)"
        session.rollback()
    return Claim(
        f"SQL in alice's session that sets app.user_id to bob's id: {outcome}",
        outcome.startswith("refused"),
    )


def _remove_key(admin_url: str, key: SigningKey) -> None:
    with _admin_connect(database_url(admin_url)) as conn:
        keys.remove(conn, key.key_id)


def run_demo(admin_url: str, where: str) -> bool:
    """Set up on admin_url, write as alice and bob, print each claim; True if all held. The
    run's login role is dropped at the end, whatever happened."""
    print(f"todo-rls demo on {where}\n")
    key = SigningKey(os.urandom(32))
    role, app_url = _prepare(admin_url, key)
    try:
        engine = create_engine(app_url)
        try:
            alice, bob = _write(engine, key, ALICE), _write(engine, key, BOB)
            claims = [
                _role_claim(engine, key, role),
                _sees_only_own_tasks(engine, key, alice),
                _sees_only_own_tasks(engine, key, bob),
                _unscoped_claim(engine, len(alice.task_ids) + len(bob.task_ids)),
                _unfiltered_select_claim(engine, key, alice),
                _update_claim(engine, key, alice, bob),
                *_message_claims(engine, key, alice, bob),
                _forged_context_claim(engine, key, alice, bob),
            ]
        finally:
            engine.dispose()
    finally:
        _drop_demo_role(admin_url, role)
        _remove_key(admin_url, key)
    print(f"\nClaims, each checked as {role} (dropped since):")
    for claim in claims:
        print(f"  {'✓' if claim.held else '✗'} {claim.text}")
    held = sum(claim.held for claim in claims)
    print(f"\n{held} of {len(claims)} claims held.")
    return held == len(claims)
