"""Which candidate pairs should a user label next? The ranking behind ``POST /users/{id}/queries``,
``micro-rm suggest`` and ``MiCRo.suggest``: suggest, the user labels, feedback, suggest again.

A candidate is a prompt and two responses (in either order). Its ``gain`` is the expected drop
(nats) of the entropy of the user's weights normalise(f_ψ(x, c) ⊙ exp(−η S_u)) once labelled
(:func:`micro_rm.train.active.best_queries`, as the harness's new-user curve).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from micro_rm.online.hedge import validate_eta
from micro_rm.scoring.limits import RequestRefused, ScoringLimits, TooManyTexts, check_pair, check_user


@dataclass(frozen=True)
class Query:
    """One suggested pair: its position in the pool and its expected information gain (nats)."""

    index: int
    gain: float


def check_pool(pairs: Any, k: Any, limits: ScoringLimits, limit: str = "max_texts") -> tuple[list[dict[str, Any]], int]:
    """``(records, k)``: each candidate checked alone (:func:`~micro_rm.data.records.normalize_pair`,
    then ``limits``), so a bad one is refused with its field and index. An empty pool or ``k`` < 1
    is a 422, a pool over ``limits.<limit>`` a 413; ``k`` is capped at the pool's size.

    >>> check_pool([{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}], 3, ScoringLimits())
    ([{'prompt': 'Hi', 'chosen': 'Hello!', 'rejected': 'Go away.'}], 1)
    """
    if not isinstance(pairs, (list, tuple)):
        raise RequestRefused(f"`pairs` must be a list of candidate pairs, got {type(pairs).__name__}")
    if not pairs:
        raise RequestRefused(f"`pairs` is empty: send at least one candidate pair")
    most = getattr(limits, limit)
    if len(pairs) > most:
        raise TooManyTexts(f"`pairs` has {len(pairs)} candidate pairs; the limit is {most} "
                           f"({limits.name(limit)}): send fewer candidates")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RequestRefused(f"`k` must be an integer ≥ 1 (how many pairs to suggest), got {k!r}")
    records = []
    for i, pair in enumerate(pairs):
        here = f"pairs[{i}]"
        if not isinstance(pair, Mapping):
            raise RequestRefused(f"{here}: a candidate must be an object with `prompt`, `chosen` and "
                                 f"`rejected`, got {type(pair).__name__}")
        raw = {key: pair.get(key) for key in ("prompt", "chosen", "rejected", "context")}
        records.append(check_pair(raw, here, limits, fix_it=False))
    return records, min(int(k), len(records))


def rank_pool(scorer: Any, records: Sequence[Mapping[str, Any]], vectors: np.ndarray,
              cumulative_loss: Optional[np.ndarray], k: int, eta: float) -> list[Query]:
    """The ``k`` most informative candidates for a user with summed losses ``cumulative_loss``
    (None: no feedback yet), best first, from the vectors of ``scorer.pair_items(records)``."""
    from micro_rm.train.active import best_queries

    n = len(records)
    head_probs = scorer.head_probs(vectors[:n], vectors[n:2 * n])                          # [n, K]
    route = scorer.route_features(vectors[2 * n:], [r.get("context") for r in records])   # [n, d_r]
    prior = scorer.model.router_weights(route).astype(np.float64)                         # [n, K]
    log_prior = np.log(np.clip(prior, 1e-300, None))
    order, gains = best_queries(head_probs, log_prior, cumulative_loss, k, eta=eta)
    return [Query(int(i), float(g)) for i, g in zip(order, gains)]


def existing_store(state: str | os.PathLike, scorer: Any) -> Any:
    """The state store at ``state`` opened for ``scorer``'s model, or None when ``state`` is a
    SQLite file that does not exist (nothing is created: every user starts from the router)."""
    from micro_rm.atomic import local_file
    from micro_rm.online import open_store

    file = local_file(state)
    if file is not None and not os.path.isfile(file):
        return None
    return open_store(state, scorer.model_id, scorer.num_heads)


def suggest(model: Any, pairs: Sequence[Mapping[str, Any]], k: int, *, user: Optional[str] = None,
            state: Any = None, eta: Optional[float] = None,
            cache_dir: Optional[str | os.PathLike] = None) -> list[Query]:
    """The ``k`` candidate pairs that teach most about ``user``, best first.

    Parameters
    ----------
    model : a :class:`~micro_rm.scoring.engine.RewardEngine` (its features, limits, η and
        state store are used), or anything it loads (a folder, hub id, model or ``RewardScorer``).
    pairs : candidate records with ``prompt`` (may be omitted for whole conversations),
        ``chosen``, ``rejected`` and an optional ``context``; other fields are ignored.
    k : how many to suggest (the whole pool if it has fewer).
    user : whose state to read (None, or a user without feedback: the router's weights).
    state : the per-user state (a path, ``sqlite:///`` or ``postgresql://`` URL, or an open
        store), read only; a file that does not exist means every user is new.
    eta : Hedge η of the user's weights (default: the engine's).
    cache_dir : feature cache folder when ``model`` is not an engine.

    >>> suggest("runs/dsp", pool, k=2, user="ana", state="state.db")    # doctest: +SKIP
    [Query(index=17, gain=0.2134), Query(index=3, gain=0.1871)]
    """
    from micro_rm.scoring.engine import RewardEngine

    engine = model if isinstance(model, RewardEngine) else RewardEngine(model, cache_dir=cache_dir)
    records, k = check_pool(pairs, k, engine.limits, "max_batch")
    user = check_user(user, "user")
    eta = engine.eta if eta is None else validate_eta(eta)
    loss = None
    if user is not None:
        opened = isinstance(state, (str, os.PathLike))
        store = existing_store(state, engine.scorer) if opened else (engine.store if state is None else state)
        if store is not None:
            try:
                loss = store.get(user, True).cumulative_loss
            finally:
                if opened:
                    store.close()
    vectors = engine.features.vectors(engine.scorer.pair_items(records))
    return rank_pool(engine.scorer, records, vectors, loss, k, eta)
