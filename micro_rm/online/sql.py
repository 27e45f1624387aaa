"""The state store's SQL and verbs, shared by the engines (:mod:`micro_rm.online.engines`).

One feedback batch is one transaction (lock the user's row, add to S_u, log the pairs), so
concurrent writers never lose an update and a killed writer leaves no orphan rows. A store refuses
a model other than the one it was created for: one model's head losses mean nothing to another's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.online.hedge import UserState
from micro_rm.online.requests import (DuplicateKey, FeedbackRequest, IdempotentResult, InvalidFeedback,
                                      StateInvalid, StateUnavailable, UserDeleted)

# Version 2 added the `deleted_users` tombstones (final deletion); a version-1 store is upgraded
# in place on open (the table is new, nothing else changed). Any other version is refused.
SCHEMA_VERSION = 2
OLDEST_SCHEMA_VERSION = 1
IDEMPOTENCY_TTL_SECONDS = 24 * 3600  # how long a repeated Idempotency-Key returns the first answer
# A user's epoch goes up when it is deleted or its token revoked or rotated; feedback authorised
# under an older epoch is refused at commit. micro_rm.serve.tokens shares this table and SQL.
EPOCH_DDL = "CREATE TABLE IF NOT EXISTS user_epochs (user_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL)"
# A deleted user keeps a tombstone until it is explicitly re-created (POST /users): no write, no
# retry and no admin feedback brings its state back meanwhile.
DELETED_DDL = "CREATE TABLE IF NOT EXISTS deleted_users (user_id TEXT PRIMARY KEY, deleted_at TEXT NOT NULL)"
BUMP_EPOCH_SQL = ("INSERT INTO user_epochs (user_id, epoch) VALUES (?, 1) ON CONFLICT (user_id) "
                  "DO UPDATE SET epoch = user_epochs.epoch + 1")
LIFT_TOMBSTONE_SQL = "DELETE FROM deleted_users WHERE user_id = ?"   # POST /users, in the token's transaction


def utc_now() -> str:
    """The current UTC time as ISO 8601 text: every timestamp column of the state database."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _key_cutoff() -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=IDEMPOTENCY_TTL_SECONDS)).isoformat()


def _guarded(method: Callable) -> Callable:
    """Turn the engine's database errors into :class:`StateUnavailable` (CLI exit 2, HTTP 503)."""

    @functools.wraps(method)
    def wrapper(self: "StateStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except self._db_errors as err:
            raise StateUnavailable(f"{self._kind} {self.location} cannot be used: {err}; restore it "
                                   "from a backup or point --state elsewhere") from None

    return wrapper


class StateStore:
    """A per-user state store (from :func:`micro_rm.online.engines.open_store`); the engine subclasses
    connect and open transactions."""

    _kind = "state"  # how messages name the store
    _placeholder = "?"
    _id_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    _for_update = ""  # row lock for the read-modify-write (PostgreSQL)
    schema_lock = ""  # serialises concurrent first opens (PostgreSQL)
    _db_errors: tuple[type[BaseException], ...] = ()  # the engine's errors, StateUnavailable once _guarded

    def __init__(self, location: str, model_id: str | None, num_heads: int | None) -> None:
        self.location = location
        self._local = threading.local()  # one connection per thread: a transaction is per connection
        self._lock = threading.Lock()
        self._conns: list[tuple[int, Any]] = []
        try:
            self._check_model(model_id, num_heads)
        except BaseException:
            self.close()
            raise

    def _check_model(self, model_id: str | None, num_heads: int | None) -> None:
        """Create the tables and the model record on first use; refuse another model or an unknown
        schema version after, and upgrade an older known one in place."""
        with self.transaction() as cur:
            if self.schema_lock:
                cur.execute(self.schema_lock)
            for ddl in self._schema():
                cur.execute(ddl)
            meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                if model_id is None or num_heads is None:
                    raise MicroRMError(f"{self._kind} {self.location} holds no micro-rm state yet; "
                                       f"`micro-rm feedback --model DIR --state {self.location}` creates it")
                meta = {"model_id": model_id, "num_heads": str(num_heads),
                        "schema_version": str(SCHEMA_VERSION)}
                cur.executemany(self.sql("INSERT INTO meta (key, value) VALUES (?, ?)"), list(meta.items()))
            found = meta.get("schema_version", "1")
            if not (found.isdigit() and OLDEST_SCHEMA_VERSION <= int(found) <= SCHEMA_VERSION):
                raise MicroRMError(f"{self._kind} {self.location} has schema_version {found!r}; this micro-rm "
                                   f"reads schema versions {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}")
            if int(found) < SCHEMA_VERSION:  # the tables _schema() just created are the upgrade
                cur.execute(self.sql("UPDATE meta SET value = ? WHERE key = 'schema_version'"),
                            (str(SCHEMA_VERSION),))
        self.model_id, self.num_heads = meta["model_id"], int(meta["num_heads"])
        if model_id is not None and (model_id, num_heads) != (self.model_id, self.num_heads):
            raise MicroRMError(f"{self._kind} {self.location} was written for model {self.model_id} "
                               f"(K={self.num_heads}), not {model_id} (K={num_heads}); point --state at another "
                               "file or database")

    # --- engine hooks ---------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError("subclasses open a DB-API connection in autocommit mode")

    def transaction(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError("subclasses yield a cursor inside one write transaction")

    # --- shared SQL -----------------------------------------------------------------------
    def sql(self, text: str) -> str:
        """``text`` with this engine's placeholder (public: the service's token table shares the store)."""
        return text.replace("?", self._placeholder)

    def _schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, model_id TEXT NOT NULL, "
            "num_heads INTEGER NOT NULL, cumulative_loss TEXT NOT NULL, "
            "num_feedback INTEGER NOT NULL, updated_at TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS feedback (id {self._id_column}, user_id TEXT NOT NULL, "
            "created_at TEXT NOT NULL, payload TEXT NOT NULL, losses TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS feedback_user ON feedback (user_id)",
            EPOCH_DDL,
            DELETED_DDL,
            "CREATE TABLE IF NOT EXISTS idempotency_keys (scope TEXT NOT NULL, key TEXT NOT NULL, "
            "request_sha256 TEXT NOT NULL, users TEXT NOT NULL, states TEXT NOT NULL, "
            "created_at TEXT NOT NULL, PRIMARY KEY (scope, key))",
            "CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency_keys (created_at)",
        ]

    def _conn(self) -> Any:
        # A connection must not cross a fork, so a forked worker opens its own.
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.conn, self._local.pid = self._connect(), os.getpid()
            with self._lock:
                self._conns.append((os.getpid(), self._local.conn))
        return self._local.conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one read on this thread's connection, outside any transaction."""
        return self._conn().execute(self.sql(sql), params).fetchall()

    def _select_user(self, cur: Any, user_id: str, lock: str = "", checked: bool = True) -> UserState | None:
        row = cur.execute(self.sql("SELECT model_id, num_heads, cumulative_loss, num_feedback FROM users "
                                   "WHERE user_id = ?") + lock, (user_id,)).fetchone()
        if row is None:
            return None
        model_id, num_heads, loss_json, num_feedback = row
        loss = np.array(json.loads(loss_json), dtype=np.float64)
        if checked and (loss.shape != (int(num_heads),) or not np.isfinite(loss).all()):
            raise StateInvalid(f"user {user_id!r} in {self.location} has a damaged state (S_u = {loss_json}, "
                               f"not {num_heads} finite numbers); nothing was read or written. "
                               f"`micro-rm user reset {user_id} --state {self.location}` forgets it")
        return UserState(user_id, int(num_heads), loss, int(num_feedback), model_id)

    @_guarded
    def check_states(self) -> None:
        """Refuse a store holding a user whose S_u is NaN or ±Infinity (checked at service start)."""
        rows = self.query("SELECT user_id FROM users WHERE cumulative_loss LIKE ? OR cumulative_loss LIKE ? "
                          "ORDER BY user_id LIMIT 6", ("%NaN%", "%Infinity%"))
        if rows:
            users = ", ".join(repr(r[0]) for r in rows[:5]) + (" and more" if len(rows) > 5 else "")
            raise StateInvalid(f"{self._kind} {self.location}: user(s) {users} have a non-finite state "
                               f"(NaN/Inf); `micro-rm user reset USER --state {self.location}` forgets one")

    def _write_state(self, cur: Any, state: UserState) -> None:
        # json.dumps writes the shortest repr of each float64, which reads back bit-exactly.
        cur.execute(self.sql("UPDATE users SET cumulative_loss = ?, num_feedback = ?, updated_at = ? "
                             "WHERE user_id = ?"),
                    (json.dumps(state.cumulative_loss.tolist()), state.num_feedback, utc_now(), state.user_id))

    def _unknown_user(self, user_id: str) -> MicroRMError:
        users = self.list_users()
        hint = f"known users: {', '.join(users[:5])}" if users else "it has no users yet, feedback creates them"
        if len(users) > 5:
            hint += f" and {len(users) - 5} more"
        return MicroRMError(f"unknown user {user_id!r} in {self.location}; {hint}")

    # --- public verbs ---------------------------------------------------------------------
    def apply_feedback(self, user_id: str, losses: Any,
                       payloads: Sequence[Mapping[str, Any]] | None = None) -> UserState:
        """Add N pairs' per-head losses [N, K] to the user's S_u and log them (with one JSON-able
        ``payloads`` dict per pair), atomically; the user's state after."""
        return self.apply_requests([FeedbackRequest([(user_id, losses, payloads)])])[0][0]

    @_guarded
    def apply_requests(self, requests: Sequence[FeedbackRequest]) -> list[list[UserState]]:
        """Apply several requests in ONE transaction; each request's states, batch by batch, each
        the user's state right after its batch (as if the batches were applied one by one).

        Raises :class:`UserDeleted` or :class:`DuplicateKey` (with the request's ``index``) and
        applies nothing if any request is stale: the caller drops that one and retries the rest.
        """
        prepared = []
        for index, request in enumerate(requests):
            try:
                prepared.append([(user_id, *self._prepare(user_id, losses, payloads))
                                 for user_id, losses, payloads in request.batches])
            except MicroRMError as err:
                raise InvalidFeedback(str(err), index) from None
        current: dict[str, UserState] = {}
        out = []
        with self.transaction() as cur:
            if any(request.key for request in requests):
                cur.execute(self.sql("DELETE FROM idempotency_keys WHERE created_at < ?"), (_key_cutoff(),))
            for index, (request, batches) in enumerate(zip(requests, prepared)):
                self._check_epochs(cur, request.epochs or {}, index)
                states = [self._apply_batch(cur, current, *batch, index) for batch in batches]
                if request.key is not None:
                    self._record_key(cur, request.key, {s.user_id: s for s in states}, index)
                out.append(states)
            for state in current.values():
                self._write_state(cur, state)
        return out

    def _lock_epoch(self, cur: Any, user_id: str) -> int:
        """The user's epoch, its row (created if missing) locked against a concurrent deletion
        (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)."""
        cur.execute(self.sql("INSERT INTO user_epochs (user_id, epoch) VALUES (?, 0) "
                             "ON CONFLICT (user_id) DO NOTHING"), (user_id,))
        return int(cur.execute(self.sql("SELECT epoch FROM user_epochs WHERE user_id = ?") + self._for_update,
                               (user_id,)).fetchone()[0])

    def _check_epochs(self, cur: Any, epochs: Mapping[str, int], index: int) -> None:
        for user_id, expected in epochs.items():
            if self._lock_epoch(cur, user_id) != expected:
                raise UserDeleted(f"user {user_id!r} was deleted, or its token revoked, while this "
                                  "feedback was in flight; nothing was applied", index)

    def _apply_batch(self, cur: Any, current: dict[str, UserState], user_id: str, losses: np.ndarray,
                     payload_json: list[str], index: int) -> UserState:
        if user_id not in current:
            if self._for_update:       # a deletion committing now must not slip past the check below
                self._lock_epoch(cur, user_id)
            if cur.execute(self.sql("SELECT 1 FROM deleted_users WHERE user_id = ?"), (user_id,)).fetchone():
                raise UserDeleted(f"user {user_id!r} was deleted, and deletion is final: nothing was applied; "
                                  "POST /users re-creates it", index)
            cur.execute(self.sql("INSERT INTO users (user_id, model_id, num_heads, cumulative_loss, num_feedback, "
                                 "updated_at) VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (user_id) DO NOTHING"),
                        (user_id, self.model_id, self.num_heads, json.dumps([0.0] * self.num_heads), utc_now()))
            try:
                current[user_id] = self._select_user(cur, user_id, self._for_update)
            except StateInvalid as err:
                raise InvalidFeedback(str(err), index) from None
        after = current[user_id].add_losses(losses)
        if not np.isfinite(after.cumulative_loss).all():
            raise InvalidFeedback(f"feedback for user {user_id!r} would make its state non-finite; "
                                  "nothing was applied", index)
        current[user_id] = after
        created = utc_now()
        cur.executemany(self.sql("INSERT INTO feedback (user_id, created_at, payload, losses) VALUES (?, ?, ?, ?)"),
                        [(user_id, created, p, json.dumps(row.tolist())) for p, row in zip(payload_json, losses)])
        return current[user_id]

    def _record_key(self, cur: Any, key: tuple[str, str, str], states: dict[str, UserState],
                    index: int) -> None:
        scope, name, digest = key
        stored = {u: [s.num_feedback, s.cumulative_loss.tolist()] for u, s in states.items()}
        cur.execute(self.sql("INSERT INTO idempotency_keys (scope, key, request_sha256, users, states, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO NOTHING"),
                    (scope, name, digest, json.dumps(sorted(states)), json.dumps(stored), utc_now()))
        if (cur.rowcount or 0) == 0:
            raise DuplicateKey(f"Idempotency-Key {name!r} was already used", index)

    @_guarded
    def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        """The stored outcome of ``key`` (unexpired), or None if it was never used."""
        rows = self.query("SELECT request_sha256, states FROM idempotency_keys WHERE scope = ? AND key = ? "
                          "AND created_at >= ?", (scope, key, _key_cutoff()))
        return IdempotentResult(rows[0][0], json.loads(rows[0][1])) if rows else None

    @_guarded
    def epoch(self, user_id: str) -> int:
        """The user's epoch now (0 if never deleted or revoked); feedback authorised now carries it."""
        rows = self.query("SELECT epoch FROM user_epochs WHERE user_id = ?", (user_id,))
        return int(rows[0][0]) if rows else 0

    @_guarded
    def delete_user(self, user_id: str) -> int | None:
        """Forget a user for good, in one transaction (:meth:`_forget`), and leave a tombstone that
        refuses every later write until ``POST /users`` lifts it (``TokenStore.create``, or
        :meth:`restore_user`). The number of feedback rows it had, or None if it had no state."""
        with self.transaction() as cur:
            state, count = self._forget(cur, user_id)
            cur.execute(self.sql("INSERT INTO deleted_users (user_id, deleted_at) VALUES (?, ?) "
                                 "ON CONFLICT (user_id) DO NOTHING"), (user_id, utc_now()))
        return count if state is not None else None

    @_guarded
    def restore_user(self, user_id: str) -> None:
        """Lift a deleted user's tombstone: writes for it are accepted again, from a fresh state."""
        with self.transaction() as cur:
            cur.execute(self.sql(LIFT_TOMBSTONE_SQL), (user_id,))

    @_guarded
    def is_deleted(self, user_id: str) -> bool:
        return bool(self.query("SELECT 1 FROM deleted_users WHERE user_id = ?", (user_id,)))

    def _forget(self, cur: Any, user_id: str) -> tuple[UserState | None, int]:
        """Move the epoch, delete the user's rows and the outcome of each idempotency key that wrote
        to it (the key stays used); the state it had (unchecked) and its number of feedback rows."""
        pattern = "%" + json.dumps(user_id).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cur.execute(self.sql(BUMP_EPOCH_SQL), (user_id,))
        state = self._select_user(cur, user_id, self._for_update, checked=False)
        cur.execute(self.sql("DELETE FROM feedback WHERE user_id = ?"), (user_id,))
        count = cur.rowcount or 0
        cur.execute(self.sql("DELETE FROM users WHERE user_id = ?"), (user_id,))
        cur.execute(self.sql("UPDATE idempotency_keys SET states = 'null' WHERE scope = ? OR users LIKE ? "
                             "ESCAPE '\\'"), (f"user:{user_id}", pattern))
        return state, count

    def _prepare(self, user_id: str, losses: Any, payloads: Sequence[Mapping[str, Any]] | None
                 ) -> tuple[np.ndarray, list[str]]:
        """One batch checked before any write: finite float64 losses [n, K], payloads as JSON."""
        losses = np.asarray(losses, dtype=np.float64)
        if losses.ndim != 2 or losses.shape[1] != self.num_heads or not np.isfinite(losses).all():
            raise MicroRMError(f"losses for user {user_id!r} must be a finite [N, {self.num_heads}] array, "
                               f"got shape {losses.shape}{'' if np.isfinite(losses).all() else ' with NaN/Inf'}")
        payloads = [{}] * len(losses) if payloads is None else list(payloads)
        if len(payloads) != len(losses):
            raise MicroRMError(f"got {len(losses)} loss rows but {len(payloads)} payloads for user {user_id!r}")
        try:
            return losses, [json.dumps(p) for p in payloads]
        except TypeError as err:
            raise MicroRMError(f"feedback payload for user {user_id!r} is not JSON-serialisable: {err}") from None

    @_guarded
    def get(self, user_id: str, missing_ok: bool = False) -> UserState:
        """The user's state; a fresh zero state if unknown and ``missing_ok``, else an error."""
        state = self._select_user(self._conn(), user_id)
        if state is not None:
            return state
        if missing_ok:
            return UserState.fresh(user_id, self.model_id, self.num_heads)
        raise self._unknown_user(user_id)

    @_guarded
    def reset(self, user_id: str) -> UserState:
        """Forget the user's state and feedback (see :meth:`_forget`); the state as it was. An
        unknown user raises and changes nothing."""
        with self.transaction() as cur:
            state, _ = self._forget(cur, user_id)
            if state is None:
                raise self._unknown_user(user_id)
        return state

    @_guarded
    def list_users(self) -> list[str]:
        """All user ids with state, sorted."""
        return [row[0] for row in self.query("SELECT user_id FROM users ORDER BY user_id")]

    @_guarded
    def feedback_count(self, user_id: str | None = None) -> int:
        """Number of logged feedback pairs, of one user or of everyone."""
        if user_id is None:
            return int(self.query("SELECT COUNT(*) FROM feedback")[0][0])
        return int(self.query("SELECT COUNT(*) FROM feedback WHERE user_id = ?", (user_id,))[0][0])

    def close(self) -> None:
        """Close every connection this process opened (from any thread)."""
        with self._lock:
            mine = [conn for pid, conn in self._conns if pid == os.getpid()]
            self._conns = [(pid, conn) for pid, conn in self._conns if pid != os.getpid()]
        for conn in mine:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
