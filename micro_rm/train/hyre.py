"""HyRe: test-time reweighting of a model's heads from a few labelled pairs (METHOD.md baselines 4–5).

Given m labelled pairs of one attribute, each head's weight is its likelihood of those labels,

    w_k ∝ exp(−Σ_i L_ik),   L_ik = −log σ(Δ_ik)

(a posterior over heads under a uniform prior), and the attribute's remaining pairs are scored
with P = Σ_k w_k σ(Δ_k). On shared-base ensemble heads this is HyRe; on MiCRo's stage-1 heads
it is MiCRo-HyRe. Unlike stage 2 it needs labels from every test attribute and it ignores the
router.

>>> evaluate_hyre(model, test_features, m=16, seed=0)["mean_accuracy"]      # doctest: +SKIP
0.7371
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.eval.metrics import NO_ATTRIBUTE, pairwise_accuracy

if TYPE_CHECKING:
    from micro_rm.features.base import PairFeatures
    from micro_rm.model.mixture import MixtureRewardModel

P_FLOOR = 1e-12  # a head that gave a label probability 0 loses 27.6 nats, not +inf


def hyre_weights(head_probs: np.ndarray) -> np.ndarray:
    """Posterior weights over heads [K] from each head's probability of the observed labels [m, K].

    Computed as a softmax of Σ_i log p_ik, so that many confident pairs cannot underflow.

    >>> hyre_weights(np.array([[0.9, 0.5], [0.8, 0.5]])).round(3)
    array([0.742, 0.258])
    """
    p = np.asarray(head_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0 or not np.all((p >= 0) & (p <= 1)):
        raise MicroRMError(f"`head_probs` must be an [m, K] array of probabilities in [0, 1], "
                           f"got shape {p.shape}")
    log_likelihood = np.log(np.clip(p, P_FLOOR, 1.0)).sum(axis=0)        # −Σ_i L_ik, [K]
    w = np.exp(log_likelihood - log_likelihood.max())
    return w / w.sum()


def evaluate_hyre(model: "MixtureRewardModel", features: "PairFeatures", *, m: int = 16,
                  seed: int = 0) -> dict[str, Any]:
    """HyRe accuracy: per attribute, weights from ``m`` labelled pairs drawn with ``seed``,
    accuracy on that attribute's other pairs; the mean is over attributes.

    Returns ``mean_accuracy``, ``per_attribute``, ``pairs`` (pairs scored), ``labelled`` (pairs
    used for the weights) and ``weights`` ({attribute: [K]}). Pairs without attributes form one
    group. An attribute with m pairs or fewer leaves nothing to score and is an error.
    """
    from micro_rm.train.stage2 import draw_budget

    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise MicroRMError(f"`m` must be an integer ≥ 1 (labelled pairs per attribute), got {m!r}")
    groups = [NO_ATTRIBUTE if a is None else str(a) for a in features.attributes] or \
        [NO_ATTRIBUTE] * len(features)
    counts = {g: groups.count(g) for g in set(groups)}
    small = sorted(g for g, n in counts.items() if n <= m)
    if small:
        raise MicroRMError(f"HyRe needs more than m={m} pairs per attribute, but {', '.join(small)} "
                           f"has only {', '.join(str(counts[g]) for g in small)}; lower m")
    probs = model.head_probs(features.chosen, features.rejected).astype(np.float64)   # [N, K]
    labelled = np.zeros(len(groups), dtype=bool)
    labelled[draw_budget(groups, m, seed)] = True
    group_of = np.array(groups, dtype=object)
    weights = {g: hyre_weights(probs[labelled & (group_of == g)]) for g in sorted(counts)}
    scored = np.flatnonzero(~labelled)
    row_weights = np.stack([weights[groups[i]] for i in scored])                      # [n, K]
    result = pairwise_accuracy((probs[scored] * row_weights).sum(axis=1), [groups[i] for i in scored])
    return {**result, "labelled": int(labelled.sum()),
            "weights": {g: w.tolist() for g, w in weights.items()}}
