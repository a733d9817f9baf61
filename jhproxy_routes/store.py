"""The store of each server's access settings (``ServerAccess``): a table of its own, in
``PortRoutes.db_url`` (the hub's database is JupyterHub's). A table made by an earlier
version gets the columns it lacks when the store opens it."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from .tokens import MODES, ServerAccess

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
    sa.Column("token_created", sa.Float),
    sa.Column("token_expires", sa.Float),
)
ADDED_COLUMNS = ("token_created", "token_expires")  # after the first version, in that order


class AccessStore:
    """Persistent ``ServerAccess`` per (user, server), in its own SQLAlchemy database."""

    def __init__(self, db_url: str):
        self.engine = sa.create_engine(db_url, future=True)
        metadata.create_all(self.engine)
        self._add_columns()

    def _add_columns(self) -> None:
        """Add the columns an older table lacks; its tokens count as made now (so that
        ``token_max_age`` applies to them from now on)."""
        t = server_access_table
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(t.name)}
        missing = [name for name in ADDED_COLUMNS if name not in present]
        if not missing:
            return
        with self.engine.begin() as conn:
            for name in missing:
                column = t.c[name]
                conn.execute(sa.text(f"ALTER TABLE {t.name} ADD COLUMN {name} {column.type.compile(self.engine.dialect)}"))
            if "token_created" in missing:
                conn.execute(sa.update(t).where(t.c.mode == "token").values(token_created=time.time()))

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
            token_created=access.token_created,
            token_expires=access.token_expires,
        )

    @staticmethod
    def _from_row(row) -> ServerAccess:
        return ServerAccess(
            mode=row.mode,
            token_sha256=row.token_sha256,
            token_encrypted=row.token_encrypted,
            port_access=json.loads(row.port_access or "{}"),
            token_created=row.token_created,
            token_expires=row.token_expires,
        )
