"""Why a single BT model fails on pooled preferences: the Theorem 3.2 diagnostic (METHOD.md).

For data labelled by a mixture with every router weight ≥ ρ, any single reward r has

    L_CE(r) ≥ 2ρK · E_x Var_k[ E_{pairs of x} σ(s*_k) ] + H,   H = E_pairs Σ_k π_k H_b(σ(s*_k))

where H is the *within-group* label entropy: the single model's cross-entropy on mixture data is
Σ_k π_k [H_b(p_k) + KL(p_k ‖ q)], and only the KL part is bounded below by Pinsker. (Using the
entropy of the mixture's own labels, H_b(Σ_k π_k p_k), instead is wrong: it is the loss of the
best single model already, so adding the variance term puts the "bound" above that loss.)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.model.mixture import MixtureRewardModel


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H_b(p) = −p log p − (1 − p) log(1 − p) in nats, elementwise, with 0 log 0 = 0.

    >>> binary_entropy(np.array([0.5, 1.0])).round(4)
    array([ 0.6931, -0.    ])
    """
    p = np.asarray(p, dtype=np.float64)
    q = 1.0 - p
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
             + np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0))


def theorem_bound(head_probs: np.ndarray, weights: np.ndarray, groups: Sequence[Any],
                  rho: Optional[float] = None) -> dict[str, Any]:
    """The Theorem 3.2 lower bound on any single model's cross-entropy, from the true mixture.

    ``head_probs`` [N, K] are the groups' probabilities σ(s*_k) that each pair's chosen side wins,
    ``weights`` [N, K] the mixture weights π(x) of each pair, ``groups`` [N] the prompt x of each
    pair (the inner expectation of the variance term is over a prompt's pairs; E_x weighs each
    prompt by its number of pairs). ``rho`` defaults to the smallest weight.

    Returns ``bound``, ``rho``, ``heads``, ``expected_variance`` (E_x Var_k) and
    ``within_group_entropy`` (H).

    >>> r = theorem_bound(np.array([[0.75, 0.25]]), np.array([[0.5, 0.5]]), ["x"])
    >>> round(r["expected_variance"], 4), round(r["within_group_entropy"], 4), round(r["bound"], 4)
    (0.0625, 0.5623, 0.6873)
    """
    head_p = np.asarray(head_probs, dtype=np.float64)                                   # [N, K]
    weights = np.asarray(weights, dtype=np.float64)                                     # [N, K]
    if head_p.ndim != 2 or head_p.shape != weights.shape or len(groups) != len(head_p):
        raise MicroRMError(f"`head_probs` and `weights` must both be [N, K] with one group per row, got "
                           f"{head_p.shape}, {weights.shape} and {len(groups)} groups")
    k = head_p.shape[1]
    if rho is None:
        rho = float(weights.min())
    elif not 0 <= rho <= 1 / k:
        raise MicroRMError(f"`rho` must lie in [0, 1/K] = [0, {1 / k:.4g}], got {rho}")
    _, group_of, counts = np.unique(np.asarray(groups, dtype=object), return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), k))
    np.add.at(sums, group_of, head_p)
    per_group = sums / counts[:, None]                                                  # [X, K]
    expected_variance = float(np.average(per_group.var(axis=1), weights=counts))
    entropy = float((weights * binary_entropy(head_p)).sum(axis=1).mean())
    return {"bound": 2 * rho * k * expected_variance + entropy, "rho": rho, "heads": k,
            "expected_variance": expected_variance, "within_group_entropy": entropy}


def theory_diagnostic(model: MixtureRewardModel, features: PairFeatures,
                      rho: Optional[float] = None) -> dict[str, Any]:
    """The Theorem 3.2 lower bound and the single BT model's actual cross-entropy.

    ``model`` is taken as the truth on ``features``. Returns :func:`theorem_bound`'s keys plus
    ``single_bt_cross_entropy`` (the best single linear head, fitted here to the mixture's label
    probabilities) and ``gap`` (= single − bound, ≥ 0 whenever every weight is ≥ ρ).
    """
    model.check_features(features)
    head_p = model.head_probs(features.chosen, features.rejected).astype(np.float64)    # [N, K]
    weights = model.router_weights(features.route).astype(np.float64)                   # [N, K]
    result = theorem_bound(head_p, weights, features.prompts, rho)
    single = single_bt_cross_entropy(features, (weights * head_p).sum(axis=1))
    return {**result, "single_bt_cross_entropy": single, "gap": single - result["bound"]}


def single_bt_cross_entropy(features: PairFeatures, label_p: np.ndarray) -> float:
    """Cross-entropy of the best single linear BT head on soft labels ``label_p`` [N].

    The loss is convex in the head, so full-batch L-BFGS finds its minimum.
    """
    diff = torch.from_numpy(np.subtract(features.chosen, features.rejected, dtype=np.float64))   # [N, d]
    target = torch.from_numpy(np.clip(np.asarray(label_p, dtype=np.float64), 0.0, 1.0))
    head = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([head], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(diff @ head, target)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(F.binary_cross_entropy_with_logits(diff @ head, target))
