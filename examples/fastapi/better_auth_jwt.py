"""Verify a Better Auth JWT (its `jwt` plugin: EdDSA, keys at /api/auth/jwks) into a user id."""

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import todo_rls

# Better Auth's default key pair is Ed25519. Naming the one algorithm accepted keeps out
# "alg": "none" and HS256-signed-with-the-public-key tokens.
ALGORITHMS = ["EdDSA"]
log = logging.getLogger(__name__)
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


@dataclass(frozen=True)
class AuthSettings:
    """Where Better Auth is and what its tokens must say."""

    issuer: str  # Better Auth's baseURL: it is both `iss` and `aud` of the tokens it signs
    audience: str
    jwks_url: str
    leeway_seconds: int = 5  # clock skew tolerated between the auth server and this API

    @classmethod
    def from_env(cls) -> "AuthSettings":
        """Read BETTER_AUTH_URL (required), BETTER_AUTH_JWKS_URL and JWT_LEEWAY_SECONDS."""
        base = os.environ.get("BETTER_AUTH_URL", "").rstrip("/")
        if not base:
            raise RuntimeError(
                "BETTER_AUTH_URL is not set: export BETTER_AUTH_URL=http://127.0.0.1:3000 "
                "(the baseURL of the Better Auth server)"
            )
        leeway = os.environ.get("JWT_LEEWAY_SECONDS", "5")
        if not leeway.isdigit() or int(leeway) > 300:
            raise RuntimeError(f"JWT_LEEWAY_SECONDS must be 0 to 300 seconds, not {leeway!r}")
        return cls(
            issuer=base,
            audience=base,
            jwks_url=os.environ.get("BETTER_AUTH_JWKS_URL") or f"{base}/api/auth/jwks",
            leeway_seconds=int(leeway),
        )


class TokenVerifier:
    """Checks signature (against the cached JWKS), iss, aud, exp and sub of one token."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        # Caches the key set for 5 minutes and refetches once when a token names an unknown
        # kid, so a key rotated by Better Auth is picked up without a restart.
        self.jwks = jwt.PyJWKClient(settings.jwks_url, cache_jwk_set=True, lifespan=300, timeout=10)

    def user_id(self, token: str) -> str:
        """The verified `sub`; jwt.PyJWTError (or InvalidUserIdError) if anything is off."""
        key = self.jwks.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=self.settings.audience,
            issuer=self.settings.issuer,
            leeway=self.settings.leeway_seconds,
            options={"require": REQUIRED_CLAIMS},
        )
        return todo_rls.validate_user_id(claims["sub"])


def _unauthorized(detail: str, error: str | None = "invalid_token") -> HTTPException:
    # RFC 6750: a request without credentials gets a bare challenge, a bad token an error code.
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge}
    )


_bearer = HTTPBearer(auto_error=False, description="A JWT from Better Auth's GET /api/auth/token")


async def authenticated_user_id(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """FastAPI dependency: the Better Auth user id of the request's Bearer JWT, or 401."""
    if credentials is None:
        raise _unauthorized("missing Authorization: Bearer <JWT from /api/auth/token>", None)
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        # PyJWKClient fetches with blocking urllib (only when its cache is cold or a kid is new).
        return await asyncio.to_thread(verifier.user_id, credentials.credentials)
    # Details (a kid, a fetch error) go to the server's log, not to an unauthenticated caller.
    except jwt.PyJWKClientConnectionError as error:
        log.error("cannot fetch Better Auth's JWKS: %s", error)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "cannot verify tokens right now"
        ) from error
    except jwt.ExpiredSignatureError as error:
        raise _unauthorized("token expired; get a new one from /api/auth/token") from error
    except (jwt.PyJWTError, todo_rls.InvalidUserIdError) as error:
        log.info("refused a token: %s", error)
        raise _unauthorized("invalid token") from error
