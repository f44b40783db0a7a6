"""`--policy-forms`: the verified predicate in the form Citus accepts, on a copy of the data.

The single-node policies compare `user_id = (select todo_rls.current_user_id())`: the
sub-select makes the verifier an InitPlan, run once per statement. Citus refuses sub-selects in
policies on distributed tables, so revision eb55c0c808a9 switches them there to the bare
`user_id = todo_rls.current_user_id()`, which runs once per index scan as an index condition and
once per row as a filter. To time both forms in one interleaved run, the bench copies its
database (CREATE DATABASE ... TEMPLATE: the same rows, statistics and signing key), switches the
copy's policies in one transaction, and drops the copy at the end. The bench database itself
keeps its policies exactly as the migrations made them.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import URL

from todo_rls.bench.setup import admin_connect

# As revision eb55c0c808a9 (distribute_on_citus) lists them: the tables it changes on Citus.
# audit_event keeps the InitPlan form there too.
OWNED_TABLES = ("task", "conversation", "message", "user_preference")
INITPLAN_FORM = "user_id = (select todo_rls.current_user_id())"
BARE_FORM = "user_id = todo_rls.current_user_id()"
# The clauses of each command's policy, as the migrations write them.
_CLAUSES = {
    "select": ("using",),
    "insert": ("with check",),
    "update": ("using", "with check"),
    "delete": ("using",),
}


def alter_policies(conn: psycopg.Connection[Any], predicate: str) -> None:
    """Set every owned table's policies to predicate, all in one transaction."""
    with conn.transaction():
        for table in OWNED_TABLES:
            for command, clauses in _CLAUSES.items():
                # predicate is one of this module's two constants, never input.
                body = " ".join(f"{clause} ({predicate})" for clause in clauses)
                conn.execute(
                    sql.SQL("alter policy {} on public.{} ").format(
                        sql.Identifier(f"{table}_{command}"), sql.Identifier(table)
                    )
                    + sql.SQL(body)
                )


def forms_in_use(conn: psycopg.Connection[Any]) -> set[str]:
    """Which predicates the owned tables' policies hold now: 'initplan', 'bare' or others."""
    rows = conn.execute(
        "select qual, with_check from pg_catalog.pg_policies"
        " where schemaname = 'public' and tablename = any(%s)",
        (list(OWNED_TABLES),),
    ).fetchall()
    found = set()
    for row in rows:
        for expression in row:
            if expression is None:
                continue
            squeezed = " ".join(expression.lower().split())
            if "select todo_rls.current_user_id()" in squeezed:
                found.add("initplan")
            elif squeezed == "(user_id = todo_rls.current_user_id())":
                found.add("bare")
            else:
                found.add(expression)
    return found


def _copy_name(dbname: str) -> str:
    # A database name holds 63 bytes; the bench's are short.
    return f"{dbname}_bare_{os.getpid()}_{secrets.token_hex(3)}"


def _server_version(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("show server_version_num").fetchall()[0][0])


@contextmanager
def bare_form_copy(admin: URL) -> Iterator[str]:
    """A copy of admin's database with the bare (Citus) form in its policies; its name.

    Nothing may be connected to admin's database while it is copied. The copy is dropped at
    the end, whatever happened.
    """
    source = str(admin.database)
    copy = _copy_name(source)
    with admin_connect(admin, "postgres") as conn:
        # FILE_COPY (PostgreSQL 15+) copies the files after a checkpoint instead of logging
        # every block: seconds for the 1m scale.
        strategy = sql.SQL(" strategy = file_copy" if _server_version(conn) >= 150000 else "")
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(copy), sql.Identifier(source)
            )
            + strategy
        )
    try:
        with admin_connect(admin, copy) as conn:
            alter_policies(conn, BARE_FORM)
            if forms_in_use(conn) != {"bare"}:
                raise RuntimeError(f"the copy's policies are not all in the bare form: {copy}")
        yield copy
    finally:
        with admin_connect(admin, "postgres") as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(copy))
            )
