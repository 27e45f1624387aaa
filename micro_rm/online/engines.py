"""The state store's engines, SQLite (a file; the default) and PostgreSQL (several replicas), and
:func:`open_store`, which picks one by address. Their shared SQL is :mod:`micro_rm.online.sql`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from micro_rm.atomic import URL_SCHEME, local_file
from micro_rm.errors import MicroRMError
from micro_rm.online.sql import StateStore

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another's transaction before failing


class UserStore(StateStore):
    """SQLite store at a path or ``sqlite:///PATH``. WAL lets scoring read while a writer commits;
    ``BEGIN IMMEDIATE`` locks before S_u is read, so two writers cannot both read the old one;
    commits are fsynced (``synchronous=FULL``), so an acknowledged update survives a crash."""

    _kind = "state file"
    _db_errors = (sqlite3.DatabaseError,)

    def __init__(self, state: str | os.PathLike, model_id: str | None = None, num_heads: int | None = None) -> None:
        text = os.fspath(state)
        path = local_file(text)
        if path is None:
            raise MicroRMError(f"unsupported state URL {text!r}; use a path, sqlite:///PATH or "
                               "postgresql://USER@HOST/DB")
        if path in ("", ":memory:"):
            raise MicroRMError(f"state {text!r} needs a file path: an in-memory database cannot be shared")
        self.path = Path(path)
        if model_id is None and not self.path.exists():
            raise MicroRMError(f"state file {path} does not exist; `micro-rm feedback --model DIR "
                               f"--state {path}` creates it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            super().__init__(path, model_id, num_heads)
        except sqlite3.DatabaseError as err:
            raise MicroRMError(f"state file {path} is not a readable SQLite database ({err})") from None

    def _connect(self) -> sqlite3.Connection:
        """A WAL connection, usable from any thread, in autocommit mode: :meth:`transaction` issues
        BEGIN IMMEDIATE itself (Python's implicit BEGIN is DEFERRED)."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A cursor inside one ``BEGIN IMMEDIATE`` transaction, rolled back on any exception."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class PostgresUserStore(StateStore):
    """PostgreSQL store for several service replicas (needs ``pip install 'psycopg[binary]'``):
    the same SQL, with ``SELECT … FOR UPDATE`` so that concurrent replicas serialise per user."""

    _kind = "state database"
    _placeholder = "%s"
    _id_column = "BIGSERIAL PRIMARY KEY"
    _for_update = " FOR UPDATE"
    schema_lock = "SELECT pg_advisory_xact_lock(7310)"  # CREATE TABLE IF NOT EXISTS races otherwise

    def __init__(self, url: str, model_id: str | None = None, num_heads: int | None = None) -> None:
        try:
            import psycopg
        except ImportError:
            raise MicroRMError("a postgresql:// state URL needs the psycopg package: "
                               "pip install 'psycopg[binary]'") from None
        self._db_errors = (psycopg.Error,)
        parts = urllib.parse.urlsplit(url)
        self._url = urllib.parse.urlunsplit(parts._replace(scheme="postgresql"))  # drop "+driver"
        if parts.password:
            parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
        shown = urllib.parse.urlunsplit(parts)
        try:
            super().__init__(shown, model_id, num_heads)
        except psycopg.OperationalError as err:
            raise MicroRMError(f"cannot use state database {shown}: {err}") from None

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._url, autocommit=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self._conn()
        with conn.transaction():
            yield conn.cursor()


def open_store(state: str | os.PathLike, model_id: str | None = None, num_heads: int | None = None) -> StateStore:
    """Open (or, given the model, create) the state store at a path or a database URL.

    ``state`` is a plain path or ``sqlite:///PATH`` (SQLite, the default engine) or
    ``postgresql://USER:PASSWORD@HOST/DB`` (also ``postgresql+psycopg://``). Without
    ``model_id``/``num_heads`` the store must exist and its own model is used (``user show``);
    with them, a store written for another model is refused.

    >>> store = open_store("sqlite:///state.db", model_id="fp-1234", num_heads=4)  # doctest: +SKIP
    >>> store.apply_feedback("ana", pair_losses(head_probs)).num_feedback  # doctest: +SKIP
    3
    """
    text = os.fspath(state)
    match = URL_SCHEME.match(text)
    if match and match.group(1).split("+")[0] in ("postgresql", "postgres"):
        return PostgresUserStore(text, model_id, num_heads)
    return UserStore(text, model_id, num_heads)
