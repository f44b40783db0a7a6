"""Rules SET001-SET003: defaults from ALTER DATABASE / ALTER ROLE ... SET that the app gets.

A default applies at connection start, and it is what begin_scope's RESET ALL restores in every
transaction; a login role can set its own (`alter role current_user set ...`), so SQL injected
into the app can leave one for every later connection.
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


# Role defaults of the login roles, except those SET001 and SET002 report.
_LOGIN_DEFAULTS = """
    select pg_catalog.pg_get_userbyid(s.setrole)::text, s.setdatabase = 0, c.setting
    from pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c(setting)
    where s.setdatabase in (0, (select d.oid from pg_catalog.pg_database d
                                where d.datname = pg_catalog.current_database()))
      and s.setrole = any(%(roles)s::oid[])
      and pg_catalog.lower(pg_catalog.split_part(c.setting, '=', 1))
          <> all(array['app.user_id', 'search_path', 'row_security'])
    order by 1, 3
"""


def login_setting_default(ctx: Context) -> Iterator[Hit]:
    """Any default of a login role: the login may have set it itself, and RESET ALL keeps it."""
    logins = [role.oid for role in ctx.login_roles]
    for name, every_database, setting in ctx.conn.execute(_LOGIN_DEFAULTS, {"roles": logins}):
        scope = "" if every_database else f' in database "{ctx.conn.info.dbname}"'
        yield Hit(
            f"role {name}",
            f"login role {name} has the default {setting}: every new connection, and every "
            "transaction after begin_scope's RESET ALL, starts with it. A login can set its own "
            "defaults, so SQL run by the app (an injection) may have left it",
            f'alter role "{name}"{scope} reset {setting.split("=", 1)[0]};',
        )
