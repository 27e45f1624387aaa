"""HyRe: test-time reweighting of a model's heads from a few labelled pairs (METHOD.md baselines 4–5).

Given m labelled pairs of one attribute, each head's weight is its likelihood of those labels,
w_k ∝ exp(−Σ_i L_ik) with L_ik = −log σ(Δ_ik), and the attribute's pairs of other prompts are
scored with P = Σ_k w_k σ(Δ_k): HyRe on shared-base heads, MiCRo-HyRe on stage-1 heads. It ignores
the router. Labelled pairs are drawn by prompt (pairs of one prompt are not independent evidence).
Its accuracy on a test split is :func:`micro_rm.eval.hyre.evaluate_hyre`.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from micro_rm.errors import MicroRMError


def hyre_losses(deltas: np.ndarray) -> np.ndarray:
    """L_ik = −log σ(Δ_ik) of each head on each labelled pair, [m, K] → [m, K].

    Computed as log(1 + e^−Δ) from the margins, never as the log of a float σ: that rounds to 0
    below Δ ≈ −17 (float64) or −88 (float32), and any clip makes very wrong heads look alike.

    >>> hyre_losses(np.array([[0.0, -50.0]])).round(4)
    array([[ 0.6931, 50.    ]])
    """
    return np.logaddexp(0.0, -np.asarray(deltas, dtype=np.float64))


def hyre_weights(deltas: np.ndarray) -> np.ndarray:
    """Posterior weights over heads [K] from each head's margin Δ_ik (winner − loser) on the
    labelled pairs [m, K]: a softmax of −Σ_i L_ik, so that many confident pairs cannot underflow.

    >>> hyre_weights(np.log([[9.0, 1.0], [4.0, 1.0]])).round(3)      # σ = 0.9, 0.8 vs 0.5, 0.5
    array([0.742, 0.258])
    """
    d = np.asarray(deltas, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0 or not np.all(np.isfinite(d)):
        raise MicroRMError(f"`deltas` must be an [m, K] array of finite reward margins, got shape {d.shape}")
    log_likelihood = -hyre_losses(d).sum(axis=0)                          # −Σ_i L_ik, [K]
    w = np.exp(log_likelihood - log_likelihood.max())
    return w / w.sum()


def draw_labelled(groups: Sequence[str], prompts: Sequence[str], m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, whole prompts in a random order (``seed``) until ``m`` pairs are labelled.

    Returns the sorted rows (labelled, scored): scored rows are the group's pairs of prompts with no
    labelled pair; the pairs of the last labelled prompt beyond the m-th are neither. Each group's
    draw depends only on the seed and its own name and rows.

    >>> draw_labelled(["a"] * 4, ["x", "x", "y", "z"], m=1, seed=0)        # doctest: +SKIP
    (array([2]), array([0, 1, 3]))
    """
    group_of, prompt_of = np.asarray(groups, dtype=object), np.asarray(prompts, dtype=object)
    labelled, scored = [], []
    for group in sorted(set(groups)):
        rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
        rows = rng.permutation(np.flatnonzero(group_of == group))
        distinct = list(dict.fromkeys(prompt_of[rows]))
        rank = dict(zip(distinct, rng.permutation(len(distinct))))
        ranks = np.array([rank[p] for p in prompt_of[rows]])
        order = np.argsort(ranks, kind="stable")
        rows, ranks = rows[order], ranks[order]
        mine = rows[m:][ranks[m:] > ranks[m - 1]]
        if len(mine) == 0:
            raise MicroRMError(f"HyRe scores an attribute's pairs of prompts it did not label, but the {m} "
                               f"labelled pairs of {group!r} take all of its {len(distinct)} prompts; lower m")
        labelled.append(rows[:m])
        scored.append(mine)
    return np.sort(np.concatenate(labelled)), np.sort(np.concatenate(scored))
