"""The signed per-transaction context that todo_rls.current_user_id() verifies in the database.

A scoped transaction carries app.user_id (the user) and app.user_sig, which is
``v1.<key id>.<expiry>.<mac>``: the key id (16 hex digits derived from the key), the expiry
(Unix seconds, ten digits) and mac = hex(HMAC-SHA256(key, "v1.<key id>.<expiry>." + user_id)).
The database recomputes the mac with the keys in todo_rls.signing_key, which the app role
cannot read, so a context cannot be forged by SQL the app runs: only by whoever holds the key.
"""

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field

from todo_rls.errors import SigningKeyError

KEY_ENV = "TODO_RLS_SIGNING_KEY"
CONTEXT_VERSION = "v1"
MIN_KEY_BYTES = 32
# SHA-256's block: HMAC pads (or first hashes) the key to exactly this many bytes.
_BLOCK_BYTES = 64
# Long enough for any clock skew between app and database; a context only needs to be valid
# when its transaction begins (the database compares the expiry with the transaction's start).
DEFAULT_CONTEXT_TTL_SECONDS = 60
_KEY_ID_LABEL = b"todo-rls signing key id\x00"


def _parse_hex(text: str, source: str) -> bytes:
    cleaned = text.strip()
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise SigningKeyError(
            f"{source} is not hexadecimal; generate a key with: todo-rls keys generate"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(
            f"{source} holds {len(key)} bytes; a signing key needs at least {MIN_KEY_BYTES} "
            f"({2 * MIN_KEY_BYTES} hex digits); generate one with: todo-rls keys generate"
        )
    return key


@dataclass(frozen=True)
class SigningKey:
    """An HMAC-SHA256 key shared by the app (which signs) and the database (which verifies)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_KEY_BYTES:
            raise SigningKeyError(f"a signing key is at least {MIN_KEY_BYTES} bytes")

    @classmethod
    def from_hex(cls, text: str, source: str = "the signing key") -> "SigningKey":
        """The key written as hex digits; SigningKeyError says what is wrong with it."""
        if not isinstance(text, str):
            raise SigningKeyError(f"{source} must be a str of hex digits")
        return cls(_parse_hex(text, source))

    @classmethod
    def from_env(cls) -> "SigningKey":
        """The key in $TODO_RLS_SIGNING_KEY; SigningKeyError if it is unset or malformed."""
        text = os.environ.get(KEY_ENV, "")
        if not text.strip():
            raise SigningKeyError(
                f"{KEY_ENV} is not set: scoped sessions sign each transaction's user with it. "
                f"Generate one with `todo-rls keys generate`, give it to the app as {KEY_ENV}, "
                "and install it in the database with `todo-rls keys add --url OWNER_URL`"
            )
        return cls(_parse_hex(text, KEY_ENV))

    @property
    def key_id(self) -> str:
        """16 hex digits naming the key: what `todo-rls keys list` shows."""
        return hashlib.sha256(_KEY_ID_LABEL + self.secret).hexdigest()[:16]

    def pads(self) -> tuple[bytes, bytes]:
        """HMAC's inner and outer padded key blocks (RFC 2104), which the database stores."""
        return hmac_pads(self.secret)

    def sign(self, user_id: str, ttl_seconds: int, now: float | None = None) -> str:
        """The app.user_sig value for user_id, valid for ttl_seconds from now."""
        expiry = int(now if now is not None else time.time()) + ttl_seconds
        signed = f"{CONTEXT_VERSION}.{self.key_id}.{expiry:010d}."
        mac = hmac.new(self.secret, (signed + user_id).encode(), hashlib.sha256).hexdigest()
        return signed + mac


def hmac_pads(secret: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's (key xor ipad, key xor opad) blocks for any key length (RFC 2104)."""
    block = hashlib.sha256(secret).digest() if len(secret) > _BLOCK_BYTES else secret
    block = block.ljust(_BLOCK_BYTES, b"\x00")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def generate_key_hex() -> str:
    """A new random key as 64 hex digits (32 bytes), for TODO_RLS_SIGNING_KEY."""
    return os.urandom(MIN_KEY_BYTES).hex()
