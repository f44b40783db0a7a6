"""End to end: a real Better Auth server signs users up, the FastAPI example serves them.

Better Auth's own migration creates "user" in an empty database, ours runs after it, and each
user, holding a JWT Better Auth signed, reaches only their own rows over HTTP. Forged, expired
and missing tokens get 401. Needs Node and `npm ci --prefix examples/better-auth`.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from todo_rls import keys, migrate

from fix_db import APP_LOGIN, SIGNING_KEY, ensure_login_role, url_as
from fix_server import PgServer

REPO = Path(__file__).resolve().parents[1]
BETTER_AUTH_DIR = REPO / "examples" / "better-auth"
FASTAPI_DIR = REPO / "examples" / "fastapi"
START_TIMEOUT_SECONDS = 30

pytestmark = [
    pytest.mark.slow,  # a Node server and real HTTP round trips
    # One xdist worker for the module: the stack (two servers, three migrations) is made once,
    # not once by each worker its tests are spread over.
    pytest.mark.xdist_group("e2e_better_auth"),
    pytest.mark.skipif(
        shutil.which("node") is None,
        reason="Node.js is not on PATH; install Node 20+ to run the Better Auth end-to-end test",
    ),
    pytest.mark.skipif(
        not (BETTER_AUTH_DIR / "node_modules").is_dir(),
        reason="Better Auth is not installed: run `npm ci --prefix examples/better-auth`",
    ),
]


def _free_ports(count: int) -> list[int]:
    """count distinct free loopback ports: the probes stay bound until all are read, so the
    kernel cannot hand out one port twice."""
    with ExitStack() as probes:
        sockets = [probes.enter_context(socket.socket()) for _ in range(count)]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]


def _free_port() -> int:
    return _free_ports(1)[0]


@contextmanager
def _service(
    name: str, argv: list[str], env: Mapping[str, str], ready_url: str, log_dir: Path
) -> Iterator[None]:
    """Run argv until the block ends (even on failure), once ready_url answers 200."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
            argv, env=_environment(env), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                exited = process.poll() is not None
                state = f"exited with {process.returncode}" if exited else "did not get ready"
                log_text = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} {state}; its output:\n{log_text}")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Settings the servers read; a developer's own values must not change what the tests check.
_SETTINGS = (
    "DATABASE_URL", "PORT", "NODE_ENV", "BETTER_AUTH_SECRET", "BETTER_AUTH_URL",
    "BETTER_AUTH_JWKS_URL", "JWT_EXPIRATION_TIME", "JWT_ISSUER", "JWT_AUDIENCE",
    "JWT_LEEWAY_SECONDS",
)  # fmt: skip


def _environment(settings: Mapping[str, str]) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name not in _SETTINGS}
    return {**inherited, **settings}


# Every URL here is plain http on loopback: verify=NO_TLS spares each call (and each poll of a
# starting server) the CA bundle httpx loads for a TLS context it would not use, ~20 ms of CPU.
NO_TLS = False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, verify=NO_TLS).status_code == 200
    except httpx.TransportError:
        return False


@dataclass(frozen=True)
class Stack:
    """Better Auth and the API, both on loopback, over one scratch database."""

    dbname: str
    admin_url: str  # the superuser, for Python (SQLAlchemy / psycopg)
    node_admin_url: str  # the same, spelled so node-postgres can parse it
    auth_url: str
    api_url: str
    secret: str


def _better_auth(
    env: dict[str, str], port: int, log_dir: Path, name: str
) -> AbstractContextManager[None]:
    argv = ["node", str(BETTER_AUTH_DIR / "server.mjs"), "serve", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/api/auth/ok"
    return _service(name, argv, env, ready, log_dir)


def _api_argv(port: int) -> list[str]:
    """The example API as its README runs it: uvicorn with the app factory."""
    app = ["--factory", "app:create_app", "--app-dir", str(FASTAPI_DIR)]
    listen = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return [sys.executable, "-m", "uvicorn", *app, *listen]


@pytest.fixture(scope="module")
def stack(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An empty database; Better Auth migrates it and serves, then our migration, then the API."""
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    with ExitStack() as cleanup:
        dbname = cleanup.enter_context(pg_server.scratch_database())
        # node-postgres cannot parse an empty host; a socket folder goes in ?host= (embedded).
        url = pg_server.url(dbname)
        admin_url = url.render_as_string(hide_password=False)
        node_url = url.set(drivername="postgresql", host=url.host or "localhost")
        node_admin_url = node_url.render_as_string(hide_password=False)
        auth_port, api_port = _free_ports(2)
        auth_url = f"http://127.0.0.1:{auth_port}"
        secret = secrets.token_hex(32)
        auth_env = {
            "DATABASE_URL": node_admin_url,
            "BETTER_AUTH_SECRET": secret,
            "BETTER_AUTH_URL": auth_url,
        }
        cleanup.enter_context(_better_auth(auth_env, auth_port, log_dir, "better-auth"))
        # Better Auth's migration made the real "user" table; ours now references it.
        migrate.upgrade(admin_url)
        with pg_server.connect(dbname, autocommit=True) as conn:
            ensure_login_role(conn, APP_LOGIN)
            # The API signs with the run's key (inherited as TODO_RLS_SIGNING_KEY): install it.
            keys.add(conn, SIGNING_KEY)
        api_env = {
            "DATABASE_URL": url_as(pg_server, dbname, APP_LOGIN),
            "BETTER_AUTH_URL": auth_url,
        }
        api_argv = _api_argv(api_port)
        api_url = f"http://127.0.0.1:{api_port}"
        cleanup.enter_context(
            _service("api", api_argv, api_env, f"{api_url}/openapi.json", log_dir)
        )
        yield Stack(
            dbname=dbname,
            admin_url=admin_url,
            node_admin_url=node_admin_url,
            auth_url=auth_url,
            api_url=api_url,
            secret=secret,
        )


@pytest.fixture
def db(pg_server: PgServer, stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    """Superuser connection to the stack's database, to arrange and to check rows behind the API."""
    with pg_server.connect(stack.dbname, autocommit=True) as conn:
        yield conn


@pytest.fixture
def connect_app_to_stack(
    pg_server: PgServer, stack: Stack
) -> Callable[[], psycopg.Connection[Any]]:
    """Connect to the stack's database as the API's login role."""
    url = url_as(pg_server, stack.dbname, APP_LOGIN).replace("postgresql+psycopg", "postgresql")
    return lambda: psycopg.connect(url)


@dataclass(frozen=True)
class Account:
    """A Better Auth user, its session token, and a JWT from GET /api/auth/token."""

    user_id: str
    session_token: str
    jwt: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.jwt}"}


def _jwt_for(auth_url: str, session_token: str) -> str:
    response = httpx.get(
        f"{auth_url}/api/auth/token",
        headers={"Authorization": f"Bearer {session_token}"},
        verify=NO_TLS,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def sign_up(stack: Stack) -> Account:
    """Sign up through Better Auth's HTTP API, as a browser on its own origin would."""
    response = httpx.post(
        f"{stack.auth_url}/api/auth/sign-up/email",
        json={
            "email": f"{secrets.token_hex(8)}@example.test",
            "password": secrets.token_urlsafe(16),
            "name": "e2e user",
        },
        headers={"Origin": stack.auth_url},  # Better Auth answers 403 without it
        verify=NO_TLS,
    )
    assert response.status_code == 200, response.text
    session_token = response.headers["set-auth-token"]
    user_id: str = response.json()["user"]["id"]
    return Account(user_id, session_token, _jwt_for(stack.auth_url, session_token))


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=10, verify=NO_TLS) as client:
        yield client


def _ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def _assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_better_auth_migration_created_the_user_table_ours_references(
    stack: Stack, db: psycopg.Connection[Any], api: httpx.Client
) -> None:
    alice = sign_up(stack)
    tables = {
        str(name)
        for (name,) in db.execute(
            "select tablename::text from pg_tables where schemaname = 'public'"
        ).fetchall()
    }
    assert {"user", "session", "account", "verification", "jwks"} <= tables  # Better Auth's
    assert {"task", "conversation", "message"} <= tables  # ours
    # Columns only Better Auth's own DDL has: this is its table, not a stand-in.
    columns = db.execute(
        "select array_agg(attname::text order by attname) from pg_attribute"
        " where attrelid = 'public.\"user\"'::regclass and attnum > 0 and not attisdropped"
    ).fetchone()
    assert columns is not None
    assert set(columns[0]) >= {"id", "email", "emailVerified", "createdAt", "updatedAt"}
    assert db.execute('select count(*) from "user" where id = %s', (alice.user_id,)).fetchone() == (
        1,
    )
    assert api.post("/tasks", json={"title": "first"}, headers=alice.auth).status_code == 201
    # The API logs in as the application role (RLS-bound), not as the superuser.
    users = db.execute(
        "select distinct usename::text from pg_stat_activity where datname = %s", (stack.dbname,)
    ).fetchall()
    assert (APP_LOGIN,) in users


def test_app_role_cannot_read_better_auths_tables(
    stack: Stack, connect_app_to_stack: Callable[[], psycopg.Connection[Any]]
) -> None:
    """Sessions, password hashes and the JWT signing key stay out of the API role's reach."""
    with connect_app_to_stack() as conn:
        assert conn.execute("select count(*) from task").fetchone() is not None  # control
        for table in ("user", "session", "account", "verification", "jwks"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("select from {}").format(sql.Identifier(table)))
            conn.rollback()


def test_each_user_sees_only_their_own_rows(
    stack: Stack, db: psycopg.Connection[Any], api: httpx.Client
) -> None:
    alice, bob = sign_up(stack), sign_up(stack)

    def post(account: Account, path: str, body: dict[str, Any]) -> str:
        response = api.post(path, json=body, headers=account.auth)
        assert response.status_code == 201, response.text
        item_id: str = response.json()["id"]
        return item_id

    alice_tasks = {post(alice, "/tasks", {"title": f"alice {n}"}) for n in range(2)}
    bob_tasks = {post(bob, "/tasks", {"title": "bob 1"})}
    alice_chat = post(alice, "/conversations", {"title": "alice chat"})
    bob_chat = post(bob, "/conversations", {"title": "bob chat"})
    alice_messages = {
        post(alice, f"/conversations/{alice_chat}/messages", {"role": r, "content": "hi"})
        for r in ("user", "assistant")
    }
    bob_messages = {
        post(bob, f"/conversations/{bob_chat}/messages", {"role": "user", "content": "yo"})
    }

    assert _ids(api.get("/tasks", headers=alice.auth)) == alice_tasks
    assert _ids(api.get("/tasks", headers=bob.auth)) == bob_tasks
    assert _ids(api.get("/conversations", headers=alice.auth)) == {alice_chat}
    assert _ids(api.get("/conversations", headers=bob.auth)) == {bob_chat}
    messages = f"/conversations/{alice_chat}/messages"
    assert _ids(api.get(messages, headers=alice.auth)) == alice_messages
    messages = f"/conversations/{bob_chat}/messages"
    assert _ids(api.get(messages, headers=bob.auth)) == bob_messages
    # Behind the API, each row carries the `sub` of the JWT that wrote it.
    owners = db.execute(
        "select id::text, user_id from task where user_id = any(%s)",
        ([alice.user_id, bob.user_id],),
    ).fetchall()
    assert dict(owners) == {
        **dict.fromkeys(alice_tasks, alice.user_id),
        **dict.fromkeys(bob_tasks, bob.user_id),
    }


def test_token_of_one_user_cannot_reach_another_users_rows_by_id(
    stack: Stack, db: psycopg.Connection[Any], api: httpx.Client
) -> None:
    alice, bob = sign_up(stack), sign_up(stack)
    bob_task = api.post("/tasks", json={"title": "bob's"}, headers=bob.auth).json()["id"]
    bob_chat = api.post("/conversations", json={}, headers=bob.auth).json()["id"]
    message = {"role": "user", "content": "bob's message"}
    posted = api.post(f"/conversations/{bob_chat}/messages", json=message, headers=bob.auth)
    assert posted.status_code == 201, posted.text
    alice_task = api.post("/tasks", json={"title": "alice's"}, headers=alice.auth).json()["id"]
    before = db.execute("select task::text from task where id = %s", (bob_task,)).fetchone()
    # Positive controls: Bob reaches his rows, Alice can change and delete her own.
    assert api.get(f"/tasks/{bob_task}", headers=bob.auth).status_code == 200
    assert api.get(f"/conversations/{bob_chat}", headers=bob.auth).status_code == 200
    patched = api.patch(f"/tasks/{alice_task}", json={"completed": True}, headers=alice.auth)
    assert patched.status_code == 200, patched.text
    assert patched.json()["completed"] is True
    assert api.delete(f"/tasks/{alice_task}", headers=alice.auth).status_code == 204
    alice_chat = api.post("/conversations", json={}, headers=alice.auth).json()["id"]
    renamed = api.patch(f"/conversations/{alice_chat}", json={"title": "x"}, headers=alice.auth)
    assert renamed.status_code == 200, renamed.text

    attempts = [
        api.get(f"/tasks/{bob_task}", headers=alice.auth),
        api.patch(f"/tasks/{bob_task}", json={"completed": True}, headers=alice.auth),
        api.delete(f"/tasks/{bob_task}", headers=alice.auth),
        api.get(f"/conversations/{bob_chat}", headers=alice.auth),
        api.patch(f"/conversations/{bob_chat}", json={"title": "x"}, headers=alice.auth),
        api.get(f"/conversations/{bob_chat}/messages", headers=alice.auth),
        api.post(f"/conversations/{bob_chat}/messages", json=message, headers=alice.auth),
        api.delete(f"/conversations/{bob_chat}", headers=alice.auth),
    ]
    assert [r.status_code for r in attempts] == [404] * len(attempts), [r.text for r in attempts]
    # Refused the same way as an id that exists nowhere.
    missing = api.get(f"/tasks/{'0' * 8}-0000-4000-8000-{'0' * 12}", headers=alice.auth)
    assert missing.status_code == 404
    assert attempts[0].json()["detail"] == f"task {bob_task} not found"
    assert db.execute("select task::text from task where id = %s", (bob_task,)).fetchone() == before
    assert db.execute(
        "select count(*), min(user_id) from message where conversation_id = %s", (bob_chat,)
    ).fetchone() == (1, bob.user_id)
    assert db.execute("select title from conversation where id = %s", (bob_chat,)).fetchone() == (
        None,
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _with_payload(token: str, changes: dict[str, Any]) -> str:
    """token with its payload changed and its original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join([header, _b64url(json.dumps({**claims, **changes}).encode()), signature])


def _signing_input(header: dict[str, str], claims: dict[str, Any]) -> str:
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"


def _hs256(signing_input: str, secret: bytes) -> str:
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def test_forged_tokens_get_401(stack: Stack, api: httpx.Client) -> None:
    alice, bob = sign_up(stack), sign_up(stack)
    assert api.post("/tasks", json={"title": "bob's"}, headers=bob.auth).status_code == 201
    assert api.get("/tasks", headers=alice.auth).status_code == 200  # positive control
    claims = jwt.decode(alice.jwt, options={"verify_signature": False})
    real_kid = jwt.get_unverified_header(alice.jwt)["kid"]
    own_key = Ed25519PrivateKey.generate()
    public_jwk = httpx.get(f"{stack.auth_url}/api/auth/jwks", verify=NO_TLS).json()["keys"][0]
    forged = {
        "bob's sub in alice's signed payload": _with_payload(alice.jwt, {"sub": bob.user_id}),
        "signed by another key, real kid": jwt.encode(
            {**claims, "sub": bob.user_id}, own_key, "EdDSA", headers={"kid": real_kid}
        ),
        "signed by another key, unknown kid": jwt.encode(
            claims, own_key, "EdDSA", headers={"kid": "not-in-jwks"}
        ),
        "alg none": _signing_input({"alg": "none"}, claims) + ".",
        # Algorithm confusion: HMAC keyed with the public key, which anyone can fetch.
        "HS256 keyed with the public key": _hs256(
            _signing_input({"alg": "HS256", "kid": real_kid}, claims),
            base64.urlsafe_b64decode(public_jwk["x"] + "=="),
        ),
        "Better Auth session token instead of a JWT": alice.session_token,
        "not a token": "garbage",
    }
    for what, token in forged.items():
        response = api.get("/tasks", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, f"{what}: {response.status_code} {response.text}"
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', what


def _jwt_from_another_better_auth(
    stack: Stack, session_token: str, log_dir: Path, **env: str
) -> str:
    """A JWT from a second Better Auth process on the same database and secret.

    Same database and secret: it signs with the same key, the one the API trusts through
    /api/auth/jwks. env overrides its settings (BETTER_AUTH_URL, JWT_*: see server.mjs).
    """
    port = _free_port()
    settings = {
        "DATABASE_URL": stack.node_admin_url,
        "BETTER_AUTH_SECRET": stack.secret,
        "BETTER_AUTH_URL": f"http://127.0.0.1:{port}",
        **env,
    }
    with _better_auth(settings, port, log_dir, "better-auth-2"):
        return _jwt_for(f"http://127.0.0.1:{port}", session_token)


def _trusted_key(stack: Stack, token: str) -> Any:
    return jwt.PyJWKClient(f"{stack.auth_url}/api/auth/jwks").get_signing_key_from_jwt(token)


def test_expired_token_gets_401(stack: Stack, api: httpx.Client, tmp_path: Path) -> None:
    """The expired token is real: Better Auth signed it with its key, and only exp is past.

    The second Better Auth keeps the first one's baseURL (so iss and aud are right) and sets
    its jwt plugin's expirationTime to "1 minute ago".
    """
    alice = sign_up(stack)
    assert api.get("/tasks", headers=alice.auth).status_code == 200  # positive control
    expired = _jwt_from_another_better_auth(
        stack,
        alice.session_token,
        tmp_path,
        BETTER_AUTH_URL=stack.auth_url,
        JWT_EXPIRATION_TIME="1 minute ago",
    )
    key = _trusted_key(stack, expired)
    # Everything but exp checks out, so exp alone is what gets the token refused.
    claims = jwt.decode(
        expired,
        key,
        algorithms=["EdDSA"],
        audience=stack.auth_url,
        issuer=stack.auth_url,
        options={"verify_exp": False},
    )
    assert claims["sub"] == alice.user_id
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, key, algorithms=["EdDSA"], audience=stack.auth_url)
    response = api.get("/tasks", headers={"Authorization": f"Bearer {expired}"})
    _assert_unauthorized(response)
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize("claim", ["iss", "aud"])
def test_token_for_another_issuer_or_audience_gets_401(
    stack: Stack, api: httpx.Client, tmp_path: Path, claim: str
) -> None:
    """Signed by the trusted key, but one of iss and aud names another deployment."""
    alice = sign_up(stack)
    assert api.get("/tasks", headers=alice.auth).status_code == 200  # positive control
    other = "https://staging.example.test"
    setting = {"iss": "JWT_ISSUER", "aud": "JWT_AUDIENCE"}[claim]
    token = _jwt_from_another_better_auth(
        stack, alice.session_token, tmp_path, BETTER_AUTH_URL=stack.auth_url, **{setting: other}
    )
    # The signature is good and only the one claim differs.
    claims = jwt.decode(
        token, _trusted_key(stack, token), algorithms=["EdDSA"], options={"verify_aud": False}
    )
    assert claims["sub"] == alice.user_id
    expected = {"iss": stack.auth_url, "aud": stack.auth_url, claim: other}
    assert {name: claims[name] for name in ("iss", "aud")} == expected
    response = api.get("/tasks", headers={"Authorization": f"Bearer {token}"})
    _assert_unauthorized(response)
    assert "invalid token" in response.json()["detail"]


def test_missing_or_non_bearer_credentials_get_401(stack: Stack, api: httpx.Client) -> None:
    alice = sign_up(stack)
    assert api.get("/tasks", headers=alice.auth).status_code == 200  # positive control
    missing = api.get("/tasks")
    _assert_unauthorized(missing)
    assert missing.headers["www-authenticate"] == "Bearer"
    _assert_unauthorized(api.get("/tasks", headers={"Authorization": f"Basic {alice.jwt}"}))
    _assert_unauthorized(api.post("/tasks", json={"title": "no token"}))


def test_bad_input_gets_422_and_writes_nothing(
    stack: Stack, db: psycopg.Connection[Any], api: httpx.Client
) -> None:
    alice = sign_up(stack)
    created = api.post("/tasks", json={"title": "fine"}, headers=alice.auth)
    assert created.status_code == 201  # positive control
    blank = api.post("/tasks", json={"title": "   "}, headers=alice.auth)
    assert blank.status_code == 422
    assert "not whitespace" in blank.json()["detail"]
    bad_role = {"role": "wizard", "content": "hi"}
    chat = api.post("/conversations", json={}, headers=alice.auth).json()["id"]
    refused = api.post(f"/conversations/{chat}/messages", json=bad_role, headers=alice.auth)
    assert refused.status_code == 422
    assert "message role must be one of" in refused.json()["detail"]
    assert api.get("/tasks/not-a-uuid", headers=alice.auth).status_code == 422
    assert db.execute(
        "select (select count(*) from task where user_id = %(u)s),"
        " (select count(*) from message where user_id = %(u)s)",
        {"u": alice.user_id},
    ).fetchone() == (1, 0)


def test_a_deleted_users_valid_token_gets_401_on_writes_and_reads_nothing(
    stack: Stack, db: psycopg.Connection[Any], api: httpx.Client
) -> None:
    alice = sign_up(stack)
    created = api.post("/tasks", json={"title": "before"}, headers=alice.auth)
    assert created.status_code == 201, created.text  # positive control
    db.execute('delete from "user" where id = %s', (alice.user_id,))  # cascades to her rows

    for path, body in [("/tasks", {"title": "after"}), ("/conversations", {})]:
        refused = api.post(path, json=body, headers=alice.auth)
        _assert_unauthorized(refused)
        assert refused.json() == {"detail": "the token's user no longer exists; sign in again"}
    assert _ids(api.get("/tasks", headers=alice.auth)) == set()
    assert db.execute(
        "select (select count(*) from task where user_id = %(u)s),"
        " (select count(*) from conversation where user_id = %(u)s)",
        {"u": alice.user_id},
    ).fetchone() == (0, 0)


def test_an_oversized_body_gets_413_and_writes_nothing(
    stack: Stack, db: psycopg.Connection[Any], api: httpx.Client
) -> None:
    alice = sign_up(stack)
    chat = api.post("/conversations", json={}, headers=alice.auth)
    assert chat.status_code == 201  # positive control
    path = f"/conversations/{chat.json()['id']}/messages"
    fits = api.post(path, json={"role": "user", "content": "x" * 500_000}, headers=alice.auth)
    assert fits.status_code == 201
    too_big = {"role": "user", "content": "x" * 2_000_000}
    assert api.post(path, json=too_big, headers=alice.auth).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what streams in
        yield b'{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}'

    streamed = api.post(
        path, content=chunks(), headers={**alice.auth, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    count = db.execute("select count(*) from message where user_id = %s", (alice.user_id,))
    assert count.fetchone() == (1,)


def test_token_errors_tell_the_caller_nothing_about_keys(stack: Stack, api: httpx.Client) -> None:
    alice = sign_up(stack)
    header = jwt.get_unverified_header(alice.jwt)
    forged = jwt.encode(
        {"sub": alice.user_id}, "k" * 32, algorithm="HS256", headers={"kid": "kid-probe-1234"}
    )
    response = api.get("/tasks", headers={"Authorization": f"Bearer {forged}"})
    _assert_unauthorized(response)
    assert response.json()["detail"] == "invalid token"
    assert header["kid"] not in response.text and "kid-probe-1234" not in response.text


def test_api_refuses_to_start_as_a_role_rls_does_not_bind(stack: Stack) -> None:
    """The stack's API started as the app role (positive control); as the superuser it exits."""
    assert _answers(f"{stack.api_url}/openapi.json")
    argv = _api_argv(_free_port())
    env = _environment({"DATABASE_URL": stack.admin_url, "BETTER_AUTH_URL": stack.auth_url})
    result = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        argv, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS
    )
    assert result.returncode != 0
    assert "UnsafeRoleError" in result.stderr
    assert "is a superuser" in result.stderr
