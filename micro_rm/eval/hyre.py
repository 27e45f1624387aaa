"""HyRe's accuracy on a test split (METHOD.md baselines 4–5; the weights: :mod:`micro_rm.train.hyre`).

>>> evaluate_hyre(model, test_features, m=16, seed=0)["mean_accuracy"]      # doctest: +SKIP
0.7371
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.eval.metrics import NO_ATTRIBUTE, pairwise_accuracy
from micro_rm.train.hyre import draw_labelled, hyre_losses, hyre_weights

if TYPE_CHECKING:
    from micro_rm.features.base import PairFeatures
    from micro_rm.model.mixture import MixtureRewardModel


def evaluate_hyre(model: "MixtureRewardModel", features: "PairFeatures", *, m: int = 16,
                  seed: int = 0) -> dict[str, Any]:
    """HyRe accuracy: per attribute, weights from ``m`` labelled pairs of prompts drawn with
    ``seed`` (:func:`draw_labelled`), accuracy on that attribute's pairs of the other prompts; the
    mean is over attributes.

    Returns ``mean_accuracy``, ``per_attribute``, ``pairs`` (pairs scored), ``labelled`` (pairs
    used for the weights), ``weights`` ({attribute: [K]}), ``scored`` (row indices of the scored
    pairs) and ``probs`` (their reweighted probabilities). Pairs without attributes form one group.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise MicroRMError(f"`m` must be an integer ≥ 1 (labelled pairs per attribute), got {m!r}")
    groups = np.array([NO_ATTRIBUTE if a is None else str(a) for a in features.attributes]
                      or [NO_ATTRIBUTE] * len(features), dtype=object)                      # [N]
    counts = Counter(groups)
    small = sorted(g for g, n in counts.items() if n <= m)
    if small:
        raise MicroRMError(f"HyRe needs more than m={m} pairs per attribute, but {', '.join(small)} "
                           f"has only {', '.join(str(counts[g]) for g in small)}; lower m")
    deltas = model.rewards(features.chosen).astype(np.float64) - model.rewards(features.rejected)   # [N, K]
    labelled, scored = draw_labelled(groups, features.prompts, m, seed)
    weights = {g: hyre_weights(deltas[labelled[groups[labelled] == g]]) for g in sorted(counts)}
    row_weights = np.stack([weights[g] for g in groups[scored]])                       # [n, K]
    probs = (row_weights * np.exp(-hyre_losses(deltas[scored]))).sum(axis=1)                # Σ_k w_k σ(Δ_k)
    return {**pairwise_accuracy(probs, list(groups[scored])), "labelled": len(labelled),
            "weights": {g: w.tolist() for g, w in weights.items()}, "scored": scored, "probs": probs}
