"""`todo-rls check` STAT001: an owned table whose user_id keeps planner statistics (ADR 0011).

The migrated schema has none; each way of getting them back is found, and each fix clears it.
Each case does it in one transaction on the shared database, ANALYZE and Alembic op included,
and audits it there as the CLI would; the transaction is rolled back after it (fix_rolled).
"""

from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection
from test_rls_guard import NOTE

import todo_rls.migrate
from todo_rls.owner_rls import enable_owner_rls

from fix_db import APP_LOGIN, DatabaseOwner, create_user
from fix_rolled import Rolled, run_op
from fix_server import PgServer

Found = list[tuple[str, str]]
STAT = "STAT001"


def stat_findings(db: Rolled, login: str | None = APP_LOGIN) -> Found:
    """(rule, object) of every STAT001 finding of `todo-rls check` over db's transaction, as
    login (None: the superuser)."""
    _, report = db.check(login=login)
    return [(f["rule"], f["object"]) for f in report["findings"] if f["rule"] == STAT]


def user_id_statistics_rows(admin: psycopg.Connection[Any], table: str) -> int:
    """How many pg_statistic rows table's user_id has (superuser's view)."""
    row = admin.execute(
        "select count(*) from pg_statistic s join pg_attribute a"
        " on a.attrelid = s.starelid and a.attnum = s.staattnum"
        " where s.starelid = %s::regclass and a.attname = 'user_id'",
        (table,),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def analyzed_task(db: Rolled) -> None:
    """task holds rows of two users and has been analyzed (in db's transaction)."""
    admin = db.conn
    for user in (create_user(admin), create_user(admin)):
        admin.execute(
            "insert into task (user_id, title) select %s, 't' from generate_series(1, 50)",
            (user,),
        )
    admin.execute("analyze task")


@pytest.mark.parametrize("as_app", [True, False], ids=["as-app-login", "as-superuser"])
def test_a_user_id_that_keeps_statistics_is_found_and_the_fix_clears_it(
    as_app: bool, db: Rolled, analyzed_task: None
) -> None:
    admin, login = db.conn, APP_LOGIN if as_app else None
    assert stat_findings(db, login) == []  # the migrated schema keeps none
    assert user_id_statistics_rows(admin, "task") == 0  # even after ANALYZE
    admin.execute("alter table task alter column user_id set statistics -1")
    admin.execute("analyze task")
    assert user_id_statistics_rows(admin, "task") == 1  # control: now it keeps some
    assert stat_findings(db, login) == [(STAT, "public.task")]
    # The fix the finding names, in one transaction: target 0, then the retype, with the
    # policies dropped and re-created around it.
    policies = task_policies(admin)
    with admin.transaction():
        admin.execute("alter table task alter column user_id set statistics 0")
        fix_by_retyping(admin, "task")
    assert user_id_statistics_rows(admin, "task") == 0
    assert stat_findings(db, login) == []
    assert task_policies(admin) == policies


def task_policies(admin: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return admin.execute(
        "select polname, polcmd, polroles, pg_get_expr(polqual, polrelid),"
        " pg_get_expr(polwithcheck, polrelid) from pg_policy"
        " where polrelid = 'task'::regclass order by polname"
    ).fetchall()


def fix_by_retyping(admin: psycopg.Connection[Any], table: str) -> None:
    """The fix STAT001 names, as an owner runs it: the policies go and come back around it."""
    rows = admin.execute(
        "select polname, format('create policy %%I on %%s for %%s to todo_app%%s%%s', polname,"
        " polrelid::regclass, case polcmd when 'r' then 'select' when 'a' then 'insert'"
        " when 'w' then 'update' else 'delete' end,"
        " coalesce(' using (' || pg_get_expr(polqual, polrelid) || ')', ''),"
        " coalesce(' with check (' || pg_get_expr(polwithcheck, polrelid) || ')', ''))"
        " from pg_policy where polrelid = %s::regclass",
        (table,),
    ).fetchall()
    for name, _ in rows:
        admin.execute(f"drop policy {name} on {table}")
    admin.execute(f"alter table {table} alter column user_id type text")
    for _, definition in rows:
        admin.execute(definition)


def test_statistics_analyze_kept_before_the_target_became_0_are_found_by_a_superuser(
    db: Rolled, analyzed_task: None
) -> None:
    admin = db.conn
    admin.execute("alter table task alter column user_id set statistics -1")
    admin.execute("analyze task")
    admin.execute("alter table task alter column user_id set statistics 0")
    admin.execute("analyze task")
    # What revision 9a4c6e8b2d10 works around: ANALYZE keeps what it had for a target-0 column.
    assert user_id_statistics_rows(admin, "task") == 1
    assert stat_findings(db, login=None) == [(STAT, "public.task")]
    # The app's login cannot read pg_statistic: it sees the target, which is 0.
    assert stat_findings(db) == []


# The default is called without the argument: a default that kept statistics must fail here.
@pytest.mark.parametrize(
    "options", [{}, {"user_id_statistics": True}], ids=["default", "user_id_statistics=True"]
)
def test_enable_owner_rls_leaves_user_id_without_statistics_unless_asked(
    options: dict[str, bool], db: Rolled, migration_connection: Connection
) -> None:
    keep = bool(options)
    # An existing table with rows and statistics, protected in a later migration.
    admin = db.conn
    admin.execute(NOTE)
    for user in (create_user(admin), create_user(admin)):
        admin.execute(
            "insert into scratch_note (user_id, body) select %s, 'b' from generate_series(1, 50)",
            (user,),
        )
    admin.execute("analyze scratch_note")
    assert user_id_statistics_rows(admin, "scratch_note") == 1  # control
    run_op(migration_connection, enable_owner_rls, "scratch_note", **options)
    admin.execute("analyze scratch_note")
    assert user_id_statistics_rows(admin, "scratch_note") == (1 if keep else 0)
    found = stat_findings(db)
    assert found == ([(STAT, "public.scratch_note")] if keep else [])


POLICIES = (
    "select c.relname::text, p.polname::text, p.polcmd, p.polpermissive, p.polroles::text,"
    " pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)"
    " from pg_policy p join pg_class c on c.oid = p.polrelid order by 1, 2"
)


def test_revision_9a4c6e8b2d10_removes_kept_statistics_as_a_database_owner_not_a_superuser(
    pg_server: PgServer, database_owner: DatabaseOwner
) -> None:
    name, owner_url = database_owner.database, database_owner.url
    todo_rls.migrate.upgrade(owner_url, "eb55c0c808a9")
    with pg_server.connect(name, autocommit=True) as admin:
        for user in (create_user(admin), create_user(admin)):
            admin.execute(
                "insert into task (user_id, title) select %s, 't' from generate_series(1, 50)",
                (user,),
            )
        with psycopg.connect(owner_url.replace("+psycopg", ""), autocommit=True) as owner:
            owner.execute("analyze task")
        assert user_id_statistics_rows(admin, "task") == 1  # control: kept at eb55c0c808a9
        policies = admin.execute(POLICIES).fetchall()
        assert len(policies) >= 16
        todo_rls.migrate.upgrade(owner_url)
        assert user_id_statistics_rows(admin, "task") == 0
        assert admin.execute(POLICIES).fetchall() == policies  # re-created exactly
        admin.execute("analyze task")
        assert user_id_statistics_rows(admin, "task") == 0
