"""Port tokens: generation, hashing, and each server's access settings (stored by ``store.py``).

A server's *mode* is ``disabled``, ``allow_all`` or ``token`` (the jhproxy protocol shows
them as ``null``, ``""`` and the token string). The token itself is never stored in plain
text: the sidecar checks a SHA-256 hash, and the hub keeps a copy encrypted with JupyterHub's
CryptKeeper (``JUPYTERHUB_CRYPT_KEY``) so that the owner can read it again. Without that key
only the hash is kept: the token is shown once, in the answer to the request that made it.
A token may have a lifetime: it is stored with the time it was made and the time it expires
(Unix time, UTC), and the sidecar refuses it from then on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field, replace

from jupyterhub.crypto import CryptKeeper, EncryptionUnavailable, decrypt, encrypt

MODES = ("disabled", "allow_all", "token")
TOKEN_BYTES = 32  # 256 bits


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_matches(presented: str, token_sha256: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    return hmac.compare_digest(hash_token(presented), token_sha256)


@dataclass(frozen=True)
class ServerAccess:
    """Access settings of one server: its token mode and per-port overrides."""

    mode: str = "disabled"
    token_sha256: str | None = None
    token_encrypted: bytes | None = None
    port_access: dict = field(default_factory=dict)  # {"5001": "public"}
    token_created: float | None = None  # Unix time the token was made
    token_expires: float | None = None  # Unix time the token is refused from; None: never

    def disabled(self) -> ServerAccess:
        return replace(self, mode="disabled", token_sha256=None, token_encrypted=None, token_created=None, token_expires=None)

    def allow_all(self) -> ServerAccess:
        return replace(self, mode="allow_all", token_sha256=None, token_encrypted=None, token_created=None, token_expires=None)

    def expires(self, max_age: int = 0) -> float | None:
        """When the token is refused from: its own expiry, or ``max_age`` seconds after it
        was made if that is sooner (``token_max_age``, also for tokens made before it was
        set or lowered); None: never (or not in token mode)."""
        if self.mode != "token":
            return None
        limits = [self.token_expires] if self.token_expires is not None else []
        if max_age and self.token_created is not None:
            limits.append(self.token_created + max_age)
        return min(limits, default=None)


class TokenUnreadable(Exception):
    """The server has a token, but only its hash is stored."""


async def with_new_token(access: ServerAccess, lifetime: int | None = None) -> tuple[ServerAccess, str]:
    """Return ``access`` in token mode with a fresh token (valid for ``lifetime`` seconds;
    None: until replaced), and that token."""
    token = new_token()
    now = time.time()
    try:
        encrypted = await encrypt(token) if CryptKeeper.instance().keys else None
    except EncryptionUnavailable:
        encrypted = None
    changed = replace(
        access,
        mode="token",
        token_sha256=hash_token(token),
        token_encrypted=encrypted,
        token_created=now,
        token_expires=now + lifetime if lifetime else None,
    )
    return changed, token


async def read_token(access: ServerAccess) -> str:
    """The plain token of a server in token mode (raises TokenUnreadable if only hashed)."""
    if access.token_encrypted is None:
        raise TokenUnreadable(
            "this token is stored only as a hash (JUPYTERHUB_CRYPT_KEY was not set when it was made);"
            " POST 'random' to make a new one, which is shown once"
        )
    try:
        return await decrypt(access.token_encrypted)
    except Exception as e:  # wrong or rotated key: the same answer, with the reason
        raise TokenUnreadable(f"the stored token cannot be decrypted ({e}); POST 'random' to make a new one") from None
