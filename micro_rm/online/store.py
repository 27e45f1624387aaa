"""Durable per-user Hedge state and the feedback log: SQLite by default, PostgreSQL by URL.

The engines are :mod:`micro_rm.online.engines`, their shared SQL :mod:`micro_rm.online.sql`.

>>> store = open_store("sqlite:///state.db", model_id="fp-1234", num_heads=4)  # doctest: +SKIP
>>> store.apply_feedback("ana", pair_losses(head_probs)).num_feedback  # doctest: +SKIP
3
"""

from __future__ import annotations

import os

from micro_rm.online.engines import URL_SCHEME, PostgresUserStore, UserStore
from micro_rm.online.sql import StateStore


def open_store(state: str | os.PathLike, model_id: str | None = None, num_heads: int | None = None) -> StateStore:
    """Open (or, given the model, create) the state store at a path or a database URL.

    ``state`` is a plain path or ``sqlite:///PATH`` (SQLite, the default engine) or
    ``postgresql://USER:PASSWORD@HOST/DB`` (also ``postgresql+psycopg://``). Without
    ``model_id``/``num_heads`` the store must exist and its own model is used (``user show``);
    with them, a store written for another model is refused.
    """
    text = os.fspath(state)
    match = URL_SCHEME.match(text)
    if match and match.group(1).split("+")[0] in ("postgresql", "postgres"):
        return PostgresUserStore(text, model_id, num_heads)
    return UserStore(text, model_id, num_heads)
