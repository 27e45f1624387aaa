"""Per-user online Hedge: route with the router as a prior, sharpened by each user's feedback
(docs/personalization.md, "New users, online").

Each user u keeps S_u,k, the sum of head k's losses on its labelled pairs, and is scored with
w = normalise(f_ψ(x, c) ⊙ exp(−η · S_u)). Hedge's regret bound (:func:`tuned_eta`) needs losses
in [0, 1], but a wrong confident head's −log p is unbounded, so :func:`pair_losses` clips p to
[p_min, 1] and scales the loss. Everything is numpy float64; torch tensors are converted.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from micro_rm.errors import MicroRMError

DEFAULT_P_MIN = math.exp(-4.0)
# η = L_max on the scaled loss is the exact Bayesian posterior over heads given the router's prior;
# η = 1 trusted a user's labels 4× less (docs/personalization.md, finding 4).
DEFAULT_ETA = math.log(1.0 / DEFAULT_P_MIN)


def _f64(x: Any) -> np.ndarray:
    """A float64 numpy array from an array-like or a (CPU or GPU, grad or not) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def validate_eta(eta: float) -> float:
    """Return ``eta`` as a float, or raise :class:`MicroRMError` unless it is finite and > 0.

    >>> validate_eta(0.5)
    0.5
    """
    eta_f = float(eta)
    if not math.isfinite(eta_f) or eta_f <= 0:
        raise MicroRMError(f"--eta must be a finite number > 0 (the Hedge learning rate), got {eta!r}; "
                           f"try --eta {DEFAULT_ETA}")
    return eta_f


def tuned_eta(num_heads: int, horizon: int) -> float:
    """The η that minimises the regret bound log K / η + η T / 8 for T = ``horizon`` pairs.

    >>> round(tuned_eta(4, 100), 4)
    0.333
    """
    return math.sqrt(8.0 * math.log(num_heads) / horizon)


def pair_losses(head_probs: Any, p_min: float = DEFAULT_P_MIN) -> np.ndarray:
    """Scaled, clipped log-loss min(−log p, L_max) / L_max in [0, 1] of each head on each pair.

    ``head_probs[n, k]`` is the probability head k gave the label observed on pair n
    (σ(r_k(chosen) − r_k(rejected))); the result has the same shape.

    >>> pair_losses([[1.0, math.exp(-2.0), 0.0]]).round(3)
    array([[0. , 0.5, 1. ]])
    """
    if not 0.0 < p_min < 1.0:
        raise MicroRMError(f"p_min must lie in (0, 1), got {p_min!r}")
    p = np.clip(_f64(head_probs), p_min, 1.0)
    return np.log(1.0 / p) / math.log(1.0 / p_min)


def hedge_log_weights(log_prior: Any, cumulative_loss: Any, eta: float) -> np.ndarray:
    """log normalise(prior ⊙ exp(−η S)), computed in log space so that huge S cannot overflow.

    ``log_prior`` is [..., K] (log router weights, one row per example), ``cumulative_loss`` is
    [K]; the result has the shape of ``log_prior`` and each row's exp sums to 1.

    >>> np.exp(hedge_log_weights(np.log([0.5, 0.5]), [0.0, math.log(3.0)], 1.0)).round(3)
    array([0.75, 0.25])
    """
    logits = _f64(log_prior) - eta * _f64(cumulative_loss)  # [..., K]
    top = logits.max(axis=-1, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))


def feedback_weights(cumulative_loss: Any, eta: float, masked: Sequence[int] = ()) -> np.ndarray:
    """normalise(exp(−η S)): a user's weights under a uniform prior over the heads that are not
    ``masked`` (a masked head's weight is 0).

    >>> feedback_weights([0.0, math.log(3.0), 1.0], 1.0, masked=[2]).round(3)
    array([0.75, 0.25, 0.  ])
    """
    log_prior = np.zeros(len(cumulative_loss))
    log_prior[list(masked)] = -np.inf
    return np.exp(hedge_log_weights(log_prior, cumulative_loss, eta))


def routed_probabilities(log_prior: Any, head_probs: Any, cumulative_loss: Any, eta: float) -> np.ndarray:
    """P(chosen ≻ rejected) of each pair under a user's weights normalise(prior ⊙ exp(−η S)):
    ``log_prior`` [N, K] log router weights, ``head_probs`` [N, K] each head's σ(Δ), S [K] → [N].
    How the service scores for a user, and how ``micro-rm eval --user`` and the harness evaluate.

    >>> routed_probabilities(np.log([[0.5, 0.5]]), [[0.9, 0.2]], [0.0, math.log(3.0)], 1.0).round(3)
    array([0.725])
    """
    weights = np.exp(hedge_log_weights(log_prior, cumulative_loss, validate_eta(eta)))
    return (weights * _f64(head_probs)).sum(axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class UserState:
    """One user's Hedge state for one model: summed per-head losses and a feedback count; immutable,
    so a failed store write never leaves a half-updated object behind.

    >>> s = UserState.fresh("ana", model_id="m1", num_heads=2).update([[0.9, 0.1]])
    >>> s.num_feedback, s.weights(np.log([[0.5, 0.5]]), eta=1.0).round(2)
    (1, array([[0.63, 0.37]]))
    """

    user_id: str
    num_heads: int
    cumulative_loss: np.ndarray  # [K] float64, S_u
    num_feedback: int
    model_id: str  # fingerprint of the model whose heads produced the losses

    @classmethod
    def fresh(cls, user_id: str, model_id: str, num_heads: int) -> "UserState":
        """A user with no feedback yet: S = 0, so the weights are the router's."""
        return cls(user_id, num_heads, np.zeros(num_heads), 0, model_id)

    def add_losses(self, losses: Any) -> "UserState":
        """The state after pairs whose scaled per-head losses are ``losses`` [N, K]."""
        losses = _f64(losses)
        if losses.ndim != 2 or losses.shape[1] != self.num_heads or not np.isfinite(losses).all():
            raise MicroRMError(f"losses for user {self.user_id!r} must be a finite [N, {self.num_heads}] array "
                               f"(one row per pair, one column per head), got shape {losses.shape}")
        return dataclasses.replace(self, cumulative_loss=self.cumulative_loss + losses.sum(axis=0),
                                   num_feedback=self.num_feedback + losses.shape[0])

    def update(self, head_probs: Any) -> "UserState":
        """The state after N labelled pairs; ``head_probs`` [N, K] as in :func:`pair_losses`."""
        return self.add_losses(pair_losses(head_probs))

    def weights(self, log_prior: Any, eta: float) -> np.ndarray:
        """Routing weights [B, K] for this user from log router weights ``log_prior`` [B, K]."""
        log_prior = _f64(log_prior)
        if log_prior.shape[-1:] != (self.num_heads,):
            raise MicroRMError(f"router weights have shape {log_prior.shape}, but user {self.user_id!r} has "
                               f"state for {self.num_heads} heads")
        return np.exp(hedge_log_weights(log_prior, self.cumulative_loss, validate_eta(eta)))
