"""Active query selection: which candidate pairs should a user label next (beyond the paper)?

A user's Hedge weights w over the K heads (:class:`micro_rm.online.UserState`) only move on pairs
where the heads that still carry weight disagree. Given each head's P_k(a ≻ b) [N, K], a pool is
ranked by ``information`` (default: the expected entropy drop of w from the pair's label, under
the exact Hedge updates of :func:`micro_rm.online.pair_losses`) or ``disagreement`` (the
weighted variance Σ_k w_k (p_k − p̄)²: cheaper, and the same ranking in most pools).

>>> order, gains = best_queries(head_probs, log_router_weights, state.cumulative_loss, k=5)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.online.hedge import (DEFAULT_ETA, DEFAULT_P_MIN, UserState, hedge_log_weights, pair_losses,
                                   validate_eta)

METHODS = ("information", "disagreement")


def weighted_disagreement(weights: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
    """Σ_k w_k (p_k − p̄)² of each pair: weights [K] or [N, K], head_probs [N, K] → [N].

    >>> weighted_disagreement(np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.9, 0.9]])).round(2)
    array([0.16, 0.  ])
    """
    w, p = _check(weights, head_probs)
    mean = (w * p).sum(axis=1, keepdims=True)                                  # p̄, [N, 1]
    return (w * (p - mean) ** 2).sum(axis=1)


def expected_information_gain(weights: np.ndarray, head_probs: np.ndarray, *, eta: float = DEFAULT_ETA,
                              p_min: float = DEFAULT_P_MIN) -> np.ndarray:
    """Expected drop of the entropy (nats) of the Hedge weights from each pair's label: [N].

    >>> expected_information_gain(np.array([0.5, 0.5]), np.array([[0.99, 0.01], [0.9, 0.9]])).round(3)
    array([0.602, 0.   ])
    """
    w, p = _check(weights, head_probs)
    eta = validate_eta(eta)
    log_w = np.log(np.clip(w, 1e-300, None))
    p_yes = (w * p).sum(axis=1)                                                # P(a ≻ b) under w, [N]
    after_yes = _entropy(hedge_log_weights(log_w, pair_losses(p, p_min), eta))
    after_no = _entropy(hedge_log_weights(log_w, pair_losses(1.0 - p, p_min), eta))
    return _entropy(hedge_log_weights(log_w, 0.0, eta)) - (p_yes * after_yes + (1.0 - p_yes) * after_no)


def rank_queries(head_probs: np.ndarray, weights: Optional[np.ndarray] = None, *,
                 state: Optional[UserState] = None, log_prior: Optional[np.ndarray] = None,
                 eta: float = DEFAULT_ETA, method: str = "information") -> np.ndarray:
    """Indices of the candidate pairs, most informative first.

    Give the user's current ``weights`` ([K], or [N, K] when they differ per pair), or their
    ``state`` and the router's ``log_prior`` for the candidates ([N, K] or [1, K]; the weights
    are then ``state.weights(log_prior, eta)``). Ties keep the pool order.
    """
    if (weights is None) == (state is None):
        raise MicroRMError("rank_queries: give exactly one of `weights` or `state` (with `log_prior`)")
    if state is not None:
        if log_prior is None:
            raise MicroRMError("rank_queries: `state` needs `log_prior`, the router's log weights of "
                               "the candidates ([N, K] or [1, K]; np.log(1/K) for no router)")
        weights = state.weights(np.atleast_2d(log_prior), eta)
    return np.argsort(-query_scores(weights, head_probs, eta=eta, method=method), kind="stable")


def best_queries(head_probs: np.ndarray, log_prior: np.ndarray, cumulative_loss: Optional[np.ndarray], k: int,
                 *, eta: float = DEFAULT_ETA, method: str = "information") -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` of the ``k`` most informative candidates, best first (ties keep the
    pool order), for a user whose weights are normalise(prior ⊙ exp(−η S)): ``head_probs`` [N, K],
    ``log_prior`` the router's log weights of the candidates [N, K] (or [1, K]),
    ``cumulative_loss`` S [K] (None: a new user, the router's weights). ``k`` past N gives N.

    >>> best_queries(np.array([[0.9, 0.9], [0.99, 0.01]]), np.log([[0.5, 0.5]]), None, 1)[0]
    array([1])
    """
    log_prior = np.atleast_2d(np.asarray(log_prior, dtype=np.float64))
    weights = np.exp(hedge_log_weights(log_prior, 0.0 if cumulative_loss is None else cumulative_loss, eta))
    score = query_scores(weights, head_probs, eta=eta, method=method)
    order = np.argsort(-score, kind="stable")[:max(int(k), 0)]
    return order, score[order]


def query_scores(weights: np.ndarray, head_probs: np.ndarray, *, eta: float = DEFAULT_ETA,
                 method: str = "information") -> np.ndarray:
    """Each candidate's score under ``method`` (see the module docstring): [N], higher is better."""
    if method not in METHODS:
        raise MicroRMError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "information":
        return expected_information_gain(weights, head_probs, eta=eta)
    return weighted_disagreement(weights, head_probs)


def _check(weights: Any, head_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(head_probs, dtype=np.float64)
    if p.ndim != 2 or not np.all((p >= 0) & (p <= 1)):
        raise MicroRMError(f"`head_probs` must be an [N, K] array of probabilities, got shape {p.shape}")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != p.shape[1] or w.shape[0] not in (1, p.shape[0]) \
            or np.any(w < 0) or not np.allclose(w.sum(axis=1), 1.0, atol=1e-6):
        raise MicroRMError(f"`weights` must be [K={p.shape[1]}] or [N, K] rows on the simplex "
                           f"(non-negative, summing to 1), got shape {w.shape}")
    return w, p


def _entropy(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(log_w)
    return -(w * np.where(w > 0, log_w, 0.0)).sum(axis=-1)
