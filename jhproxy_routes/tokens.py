"""Port tokens: generation, hashing, and the store of each server's access settings.

A server's *mode* is ``disabled``, ``allow_all`` or ``token`` (the jhproxy protocol shows
them as ``null``, ``""`` and the token string). The token itself is never stored in plain
text: the sidecar checks a SHA-256 hash, and the hub keeps a copy encrypted with JupyterHub's
CryptKeeper (``JUPYTERHUB_CRYPT_KEY``) so that the owner can read it again. Without that key
only the hash is kept: the token is shown once, in the answer to the request that made it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field, replace

import sqlalchemy as sa
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

    def disabled(self) -> ServerAccess:
        return replace(self, mode="disabled", token_sha256=None, token_encrypted=None)

    def allow_all(self) -> ServerAccess:
        return replace(self, mode="allow_all", token_sha256=None, token_encrypted=None)


class TokenUnreadable(Exception):
    """The server has a token, but only its hash is stored."""


async def with_new_token(access: ServerAccess) -> tuple[ServerAccess, str]:
    """Return ``access`` in token mode with a fresh token, and that token."""
    token = new_token()
    try:
        encrypted = await encrypt(token) if CryptKeeper.instance().keys else None
    except EncryptionUnavailable:
        encrypted = None
    changed = replace(access, mode="token", token_sha256=hash_token(token), token_encrypted=encrypted)
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


metadata = sa.MetaData()
server_access_table = sa.Table(
    "jhproxy_routes_server_access",
    metadata,
    sa.Column("username", sa.Unicode(255), primary_key=True),
    sa.Column("servername", sa.Unicode(255), primary_key=True),
    sa.Column("mode", sa.Unicode(16), nullable=False),
    sa.Column("token_sha256", sa.Unicode(64)),
    sa.Column("token_encrypted", sa.LargeBinary),
    sa.Column("port_access", sa.UnicodeText, nullable=False, default="{}"),
)


class AccessStore:
    """Persistent ``ServerAccess`` per (user, server), in its own SQLAlchemy database."""

    def __init__(self, db_url: str):
        self.engine = sa.create_engine(db_url, future=True)
        metadata.create_all(self.engine)

    def get(self, username: str, servername: str) -> ServerAccess | None:
        t = server_access_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.username == username, t.c.servername == servername)).first()
        return self._from_row(row) if row else None

    def all(self) -> dict[tuple[str, str], ServerAccess]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(server_access_table)).all()
        return {(row.username, row.servername): self._from_row(row) for row in rows}

    def put(self, username: str, servername: str, access: ServerAccess) -> None:
        t = server_access_table
        values = self._values(access)
        with self.engine.begin() as conn:
            where = (t.c.username == username, t.c.servername == servername)
            if not conn.execute(sa.update(t).where(*where).values(**values)).rowcount:
                conn.execute(sa.insert(t).values(username=username, servername=servername, **values))

    def add_missing(self, accesses: dict[tuple[str, str], ServerAccess]) -> None:
        """Store the settings of servers that have none yet, in one transaction; a row
        written meanwhile (a user's change) is kept."""
        t = server_access_table
        with self.engine.begin() as conn:
            present = {tuple(row) for row in conn.execute(sa.select(t.c.username, t.c.servername))}
            rows = [
                {"username": u, "servername": s, **self._values(access)}
                for (u, s), access in accesses.items()
                if (u, s) not in present
            ]
            if rows:
                conn.execute(sa.insert(t), rows)

    def rename_user(self, old: str, new: str) -> int:
        """The settings of user ``old`` become ``new``'s (rows left under ``new`` by a user
        deleted earlier are dropped first); how many servers moved."""
        t = server_access_table
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.username == new))
            return conn.execute(sa.update(t).where(t.c.username == old).values(username=new)).rowcount

    def delete(self, keys) -> list[tuple[str, str]]:
        """Delete the settings of servers ``(username, servername)``; servername ``None``:
        every server of the user. The (username, servername) of the rows deleted."""
        t = server_access_table
        deleted = []
        with self.engine.begin() as conn:
            for username, servername in keys:
                where = [t.c.username == username] + ([] if servername is None else [t.c.servername == servername])
                rows = conn.execute(sa.select(t.c.username, t.c.servername).where(*where)).all()
                if rows:
                    conn.execute(sa.delete(t).where(*where))
                    deleted.extend(tuple(row) for row in rows)
        return deleted

    @staticmethod
    def _values(access: ServerAccess) -> dict:
        if access.mode not in MODES:
            raise ValueError(f"unknown mode {access.mode!r}")
        return dict(
            mode=access.mode,
            token_sha256=access.token_sha256,
            token_encrypted=access.token_encrypted,
            port_access=json.dumps(access.port_access, sort_keys=True),
        )

    @staticmethod
    def _from_row(row) -> ServerAccess:
        return ServerAccess(
            mode=row.mode,
            token_sha256=row.token_sha256,
            token_encrypted=row.token_encrypted,
            port_access=json.loads(row.port_access or "{}"),
        )
