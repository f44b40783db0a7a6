"""Rules IDN001-IDN004 and LO001: the verified identity holds only if no app role can sign.

The policies trust todo_rls.current_user_id(), which trusts a signature; a role of the app that
can read (or install) a signing key, run the verifier's key ring, or read a key written into a
function body could sign any user's context. Large objects sit outside row-level security.
"""

from collections.abc import Iterator

from todo_rls.check.context import Context
from todo_rls.check.findings import Hit
from todo_rls.owner_rls import IDENTITY_FUNCTION

# The function every owner policy compares user_id with: owner_rls's, not a copy.
VERIFIER = IDENTITY_FUNCTION
KEY_TABLE = "todo_rls.signing_key"
KEY_RING = "todo_rls.signing_key_ring()"

_VERIFIER = """
    select f.prosecdef, o.rolname::text, o.rolcanlogin, o.rolsuper or o.rolbypassrls,
           coalesce(pg_catalog.array_to_string(f.proconfig, ', '), '')
    from pg_catalog.pg_proc f join pg_catalog.pg_roles o on o.oid = f.proowner
    where f.oid = pg_catalog.to_regprocedure(%s)
"""
_KEY_PRIVILEGES = """
    select p.privilege
    from unnest(array['SELECT', 'INSERT', 'UPDATE']) p(privilege)
    where pg_catalog.has_table_privilege(%(role)s::oid, pg_catalog.to_regclass(%(table)s),
                                         p.privilege)
"""
# Hex or base64 runs long enough to be a 256-bit key, in any function's body or settings
# outside the system schemas (pg_proc is readable by every role). Run without parameters, so
# its % signs reach the server as they are.
_KEYS_IN_BODIES = """
    select pg_catalog.format('%I.%I(%s)', n.nspname, f.proname,
                             pg_catalog.pg_get_function_identity_arguments(f.oid))
    from pg_catalog.pg_proc f join pg_catalog.pg_namespace n on n.oid = f.pronamespace
    where n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
      and (coalesce(f.prosrc, '') ~ '[0-9A-Fa-f]{64}|[A-Za-z0-9+/]{43}='
           or coalesce(pg_catalog.array_to_string(f.proconfig, ' '), '')
              ~ '[0-9A-Fa-f]{64}|[A-Za-z0-9+/]{43}=')
    order by 1
"""
_ACTIVE_KEYS = """
    select count(*) filter (where retire_at is null or retire_at > pg_catalog.now())
    from todo_rls.signing_key
"""
_LARGE_OBJECTS = """
    select count(*) from pg_catalog.pg_largeobject_metadata l
    where pg_catalog.pg_has_role(%(role)s::oid, l.lomowner, 'MEMBER')
       or exists (select from pg_catalog.aclexplode(l.lomacl) a
                  where a.grantee = 0 or pg_catalog.pg_has_role(%(role)s::oid, a.grantee,
                                                                'MEMBER'))
"""


def _exists(ctx: Context, regclass_or_proc: str, kind: str) -> bool:
    lookup = "to_regprocedure" if kind == "function" else "to_regclass"
    row = ctx.conn.execute(f"select pg_catalog.{lookup}(%s) is not null", (regclass_or_proc,))
    found = row.fetchone()
    return bool(found and found[0])


def verifier_unsound(ctx: Context) -> Iterator[Hit]:
    """The verifier is missing, or runs as a role that could do more than read the keys."""
    row = ctx.conn.execute(_VERIFIER, (VERIFIER,)).fetchone()
    if row is None:
        yield Hit(
            VERIFIER,
            f"{VERIFIER} does not exist, so no policy can verify who a transaction serves",
            "todo-rls migrate --url OWNER_URL",
        )
        return
    definer, owner, can_login, bypasses, config = row
    if not definer:
        yield Hit(
            VERIFIER,
            f"{VERIFIER} is not SECURITY DEFINER: it runs as the caller, who must not be able "
            "to read the keys (it fails closed, but nothing verifies)",
            f"alter function {VERIFIER} security definer;",
        )
    if can_login or bypasses:
        yield Hit(
            VERIFIER,
            f"{VERIFIER} runs as {owner}, a role that can log in or bypasses row-level "
            "security: its owner must be a NOLOGIN role that can only read the keys",
            f"alter function {VERIFIER} owner to todo_rls_verifier;",
        )
    if "search_path=" not in config:
        yield Hit(
            VERIFIER,
            f"{VERIFIER} has no fixed search_path",
            f"alter function {VERIFIER} set search_path = pg_catalog, pg_temp;",
        )


def app_can_sign(ctx: Context) -> Iterator[Hit]:
    """An app role that can read or install a signing key, or run the key ring, can sign."""
    has_keys = _exists(ctx, KEY_TABLE, "table")
    has_ring = _exists(ctx, KEY_RING, "function")
    for role in ctx.roles:
        if role.superuser:
            continue  # ROLE001 says it: a superuser reads everything
        if has_keys:
            params = {"role": role.oid, "table": KEY_TABLE}
            granted = [p for (p,) in ctx.conn.execute(_KEY_PRIVILEGES, params)]
            if granted:
                yield Hit(
                    f"role {role.name}",
                    f"{role.name} holds {', '.join(granted)} on {KEY_TABLE} (directly or "
                    "through a role it belongs to): it can sign any user's context",
                    f"revoke all on {KEY_TABLE} from {role.name}; (and from each role that "
                    "grants it; todo_rls_verifier may only SELECT)",
                )
        if has_ring:
            row = ctx.conn.execute(
                "select pg_catalog.has_function_privilege(%s::oid, "
                "pg_catalog.to_regprocedure(%s), 'EXECUTE')",
                (role.oid, KEY_RING),
            ).fetchone()
            if row and row[0]:
                yield Hit(
                    f"role {role.name}",
                    f"{role.name} may execute {KEY_RING}, which returns the signing keys",
                    f"revoke execute on function {KEY_RING} from public, {role.name};",
                )


def key_in_function_body(ctx: Context) -> Iterator[Hit]:
    """A function body or setting holding a key-sized hex or base64 run: readable by all."""
    for (function,) in ctx.conn.execute(_KEYS_IN_BODIES):
        yield Hit(
            function,
            f"{function} holds a 256-bit-sized hex or base64 constant in its body or settings, "
            "which every role can read in pg_proc: a signing key must live only in "
            f"{KEY_TABLE}",
            "move the secret out of the function (todo-rls keys add), then rotate it: it has "
            "been readable",
        )


def no_active_key(ctx: Context) -> Iterator[Hit]:
    """No usable signing key: every scoped transaction is refused."""
    if not _exists(ctx, KEY_TABLE, "table"):
        return
    row = ctx.conn.execute(
        "select pg_catalog.has_table_privilege(pg_catalog.to_regclass(%s), 'SELECT')",
        (KEY_TABLE,),
    ).fetchone()
    if not (row and row[0]):
        return  # not ours to read (run as the app login): IDN002 covers the other way round
    counted = ctx.conn.execute(_ACTIVE_KEYS).fetchone()
    if counted is not None and counted[0] == 0:
        yield Hit(
            KEY_TABLE,
            "no active signing key is installed: every scoped transaction is refused",
            "TODO_RLS_SIGNING_KEY=<the app's key> todo-rls keys add --url OWNER_URL",
        )


def large_objects_outside_rls(ctx: Context) -> Iterator[Hit]:
    """Large objects an app role can reach: no policy applies to them."""
    row = ctx.conn.execute("select pg_catalog.current_setting('lo_compat_privileges')").fetchone()
    if row is not None and row[0] == "on":
        yield Hit(
            "lo_compat_privileges",
            "lo_compat_privileges is on: every role reads and writes every large object",
            "alter system set lo_compat_privileges = off; (superuser)",
        )
    for role in ctx.roles:
        counted = ctx.conn.execute(_LARGE_OBJECTS, {"role": role.oid}).fetchone()
        if counted is not None and counted[0]:
            yield Hit(
                f"role {role.name}",
                f"{role.name} can read {counted[0]} large object(s), which no row-level "
                "security policy covers (every session of a login shares them)",
                "keep users' data in owned tables; remove them with lo_unlink() as their owner",
            )
