"""Rules SET001 and SET002: defaults from ALTER DATABASE / ALTER ROLE ... SET that the app gets.

A default applies at connection start; a query run outside the scoped session then carries it.
"""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit

# Defaults for this database or every database, for every role or one of the app's roles.
_DEFAULTS = """
    select case when s.setrole = 0 then 'database' else 'role' end,
           case when s.setrole = 0 then pg_catalog.current_database()::text
                else pg_catalog.pg_get_userbyid(s.setrole)::text end,
           s.setdatabase = 0, c.setting
    from pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c(setting)
    where s.setdatabase in (0, (select d.oid from pg_catalog.pg_database d
                                where d.datname = pg_catalog.current_database()))
      and (s.setrole = 0 or s.setrole = any(%(roles)s::oid[]))
      and pg_catalog.lower(pg_catalog.split_part(c.setting, '=', 1)) = any(%(names)s)
    order by 1, 2, 4
"""


def _defaults(ctx: Context, names: list[str]) -> Iterator[tuple[str, str, str]]:
    """(object, `alter ...` target, setting) of each default for one of names."""
    for kind, name, every_database, setting in ctx.conn.execute(
        _DEFAULTS, {"roles": ctx.role_oids, "names": names}
    ):
        if kind == "database":
            yield f"database {name}", f'database "{name}"', setting
        else:
            scope = "" if every_database else f' in database "{ctx.conn.info.dbname}"'
            yield f"role {name}", f'role "{name}"{scope}', setting


def user_setting_default(ctx: Context) -> Iterator[Hit]:
    """A default app.user_id: an unscoped query then reads that user's rows (fails open)."""
    for obj, target, setting in _defaults(ctx, ["app.user_id"]):
        yield Hit(
            obj,
            f"{obj} has the default {setting}: every connection starts as that user, so a "
            "query outside a scoped transaction reads their rows instead of none",
            f"alter {target} reset app.user_id;",
        )


def session_setting_default(ctx: Context) -> Iterator[Hit]:
    """A default search_path or row_security: changes what the app's queries resolve to or do."""
    for obj, target, setting in _defaults(ctx, ["search_path", "row_security"]):
        name = setting.split("=", 1)[0]
        yield Hit(
            obj,
            f"{obj} has the default {setting}: the app's unqualified names (or its row "
            "security mode) depend on a setting no migration records",
            f"alter {target} reset {name};",
        )
