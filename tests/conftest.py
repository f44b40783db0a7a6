"""Fixtures live in topic modules: the server, the migrated database, the users and engines."""

pytest_plugins = ["fix_server", "fix_db", "fix_pgbouncer"]
