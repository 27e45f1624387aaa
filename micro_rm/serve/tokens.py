"""Bearer tokens of the service's users, in the state database: only a SHA-256 of each is stored
(tokens are 256 random bits: it cannot be reversed by guessing). Nothing is cached, so a revoked
token is refused at once (docs/service.md); each change moves the user's epoch (``EPOCH_DDL``).

>>> tokens = TokenStore(open_store("sqlite:///state.db"))  # doctest: +SKIP
>>> tokens.lookup(tokens.create("ana"))                     # doctest: +SKIP
('ana', 0)
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Optional

from micro_rm.errors import MicroRMError
from micro_rm.online.sql import BUMP_EPOCH_SQL, LIFT_TOMBSTONE_SQL, StateStore, utc_now

TOKEN_PREFIX = "mrm_"


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: what the table stores.

    >>> hash_token("abc")[:12]
    'ba7816bf8f01'
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class UserExists(MicroRMError):
    """``create`` for a user that already has a token."""

    status = 409


class UnknownUser(MicroRMError):
    """``rotate`` for a user that has no token."""

    status = 404


class TokenStore:
    """User id → token hash, in the state store's database: it runs on the store's connections
    (one per thread) and transactions, on SQLite or PostgreSQL alike."""

    def __init__(self, store: StateStore):
        self._store = store
        self._sql = store.sql
        with store.transaction() as cur:
            if store.schema_lock:
                cur.execute("SELECT pg_advisory_xact_lock(7311)")  # PostgreSQL: concurrent first opens
            cur.execute("CREATE TABLE IF NOT EXISTS api_tokens (user_id TEXT PRIMARY KEY, "
                        "token_sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)")

    def create(self, user_id: str) -> str:
        """A new token for ``user_id`` (returned once, only its hash is kept), or
        :class:`UserExists` if it has one. Creating a user lifts its deletion tombstone in the same
        transaction: it starts afresh."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._store.transaction() as cur:
            cur.execute(self._sql("INSERT INTO api_tokens (user_id, token_sha256, created_at) VALUES (?, ?, ?) "
                                  "ON CONFLICT (user_id) DO NOTHING"), (user_id, hash_token(token), utc_now()))
            if not cur.rowcount:
                raise UserExists(f"user {user_id!r} already exists; POST /users/{user_id}/token "
                                 "issues a new token")
            # Creating a user is the one way back after a deletion (see StateStore.delete_user).
            cur.execute(self._sql(LIFT_TOMBSTONE_SQL), (user_id,))
        return token

    def rotate(self, user_id: str) -> str:
        """A new token for an existing user; the old one is refused as soon as this returns.
        Raises :class:`UnknownUser` for a user without a token (``create`` makes one)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._store.transaction() as cur:
            cur.execute(self._sql("UPDATE api_tokens SET token_sha256 = ?, created_at = ? WHERE user_id = ?"),
                        (hash_token(token), utc_now(), user_id))
            if not cur.rowcount:
                raise UnknownUser(f"unknown user {user_id!r}: it has no token to rotate; POST /users "
                                  "creates it")
            cur.execute(self._sql(BUMP_EPOCH_SQL), (user_id,))
        return token

    def lookup(self, token: str) -> Optional[tuple[str, int]]:
        """``(user, epoch)`` of the token's user, or None: one read of the committed tables."""
        rows = self._store.query("SELECT t.user_id, COALESCE(e.epoch, 0) FROM api_tokens t LEFT JOIN user_epochs e "
                                 "ON e.user_id = t.user_id WHERE t.token_sha256 = ?", (hash_token(token),))
        return (rows[0][0], int(rows[0][1])) if rows else None

    def exists(self, user_id: str) -> bool:
        return bool(self._store.query("SELECT 1 FROM api_tokens WHERE user_id = ?", (user_id,)))

    def revoke(self, user_id: str) -> bool:
        """Delete the user's token and move its epoch, in one transaction; whether there was one."""
        with self._store.transaction() as cur:
            cur.execute(self._sql("DELETE FROM api_tokens WHERE user_id = ?"), (user_id,))
            revoked = (cur.rowcount or 0) > 0
            if revoked:
                cur.execute(self._sql(BUMP_EPOCH_SQL), (user_id,))
        return revoked

    def list_users(self) -> list[str]:
        return [row[0] for row in self._store.query("SELECT user_id FROM api_tokens ORDER BY user_id")]
