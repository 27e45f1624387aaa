"""Why a single BT model fails on pooled preferences: the Theorem 3.2 diagnostic (METHOD.md).

For data labelled by a mixture with every router weight ≥ ρ, any single reward r has

    L_CE(r) ≥ 2ρK · E_x Var_k[ E_{pairs of x} σ(s*_k) ] + H

where H is the mean binary entropy of the mixture's own label probabilities. ``theory_diagnostic``
evaluates the bound for a fitted mixture on a set of features, taking the mixture as the truth,
and fits the best single linear BT head to the same soft labels to show the loss it really gets.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.model.mixture import MixtureRewardModel


def theory_diagnostic(model: MixtureRewardModel, features: PairFeatures,
                      rho: Optional[float] = None) -> dict[str, Any]:
    """The Theorem 3.2 lower bound and the single BT model's actual cross-entropy.

    ``rho`` defaults to the smallest router weight seen on ``features``. Pairs are grouped by
    prompt for the inner expectation; E_x weighs each prompt by its number of pairs.

    Returns ``bound``, ``rho``, ``heads``, ``expected_variance`` (E_x Var_k), ``label_entropy``
    (H), ``single_bt_cross_entropy`` (the best single linear head, fitted here to the mixture's
    label probabilities) and ``gap`` (= single − bound, ≥ 0 when the theorem's premise holds).
    """
    model.check_features(features)
    head_p = model.head_probs(features.chosen, features.rejected).astype(np.float64)    # [N, K]
    weights = model.router_weights(features.route).astype(np.float64)                   # [N, K]
    label_p = np.clip((weights * head_p).sum(axis=1), 1e-12, 1 - 1e-12)                 # [N]
    if rho is None:
        rho = float(weights.min())
    elif not 0 <= rho <= 1 / weights.shape[1]:
        raise MicroRMError(f"`rho` must lie in [0, 1/K] = [0, {1 / weights.shape[1]:.4g}], got {rho}")
    _, prompt_of, counts = np.unique(np.asarray(features.prompts, dtype=object), return_inverse=True,
                                     return_counts=True)
    sums = np.zeros((len(counts), head_p.shape[1]))
    np.add.at(sums, prompt_of, head_p)
    per_prompt = sums / counts[:, None]                                                 # [X, K]
    expected_variance = float(np.average(per_prompt.var(axis=1), weights=counts))
    entropy = float(-(label_p * np.log(label_p) + (1 - label_p) * np.log1p(-label_p)).mean())
    bound = 2 * rho * head_p.shape[1] * expected_variance + entropy
    single = single_bt_cross_entropy(features, label_p)
    return {"bound": bound, "rho": rho, "heads": head_p.shape[1], "expected_variance": expected_variance,
            "label_entropy": entropy, "single_bt_cross_entropy": single, "gap": single - bound}


def single_bt_cross_entropy(features: PairFeatures, label_p: np.ndarray, max_iter: int = 200) -> float:
    """Cross-entropy of the best single linear BT head on soft labels ``label_p`` [N].

    The loss is convex in the head, so full-batch L-BFGS finds its minimum.
    """
    diff = torch.from_numpy(np.subtract(features.chosen, features.rejected, dtype=np.float64))   # [N, d]
    target = torch.from_numpy(np.asarray(label_p, dtype=np.float64))
    head = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([head], max_iter=max_iter, line_search_fn="strong_wolfe")

    def cross_entropy() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(diff @ head, target)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = cross_entropy()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(cross_entropy())
