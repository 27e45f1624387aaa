"""Pairwise metrics of the paper's protocol (METHOD.md, Evaluation). A pair counts as correct when
the model gives the labelled winner probability > 0.5.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError

NO_ATTRIBUTE = "(none)"  # the group of pairs without an attribute, when others have one


def pairwise_accuracy(probs: np.ndarray, attributes: Optional[Sequence[Optional[str]]] = None) -> dict[str, Any]:
    """Accuracy per attribute and its unweighted mean over attributes (over all pairs when no
    pair has an attribute).

    >>> pairwise_accuracy(np.array([0.9, 0.2, 0.7, 0.6]), ["a", "a", "b", "b"])
    {'mean_accuracy': 0.75, 'per_attribute': {'a': 0.5, 'b': 1.0}, 'pairs': 4}
    """
    correct = _as_probs(probs, "probs") > 0.5
    groups = attribute_groups(attributes, len(correct))
    if groups is None:
        return {"mean_accuracy": float(correct.mean()), "per_attribute": {}, "pairs": len(correct)}
    per = {name: float(correct[groups == name].mean()) for name in sorted(set(groups))}
    return {"mean_accuracy": float(np.mean(list(per.values()))), "per_attribute": per, "pairs": len(correct)}


def head_attribute_matrix(head_probs: np.ndarray,
                          attributes: Optional[Sequence[Optional[str]]] = None) -> dict[str, Any]:
    """Every head's accuracy on every attribute (the paper's stage-1 check).

    Returns ``attributes`` (column names), ``accuracy`` (K rows × attributes), ``best_head``
    ({attribute: head index}) and ``oracle_mean_accuracy`` (the mean over attributes of the best
    head's accuracy: the upper bound of what routing can reach).

    >>> m = head_attribute_matrix(np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.7]]), ["a", "a", "b"])
    >>> m["accuracy"], m["best_head"], m["oracle_mean_accuracy"]
    ([[1.0, 0.0], [0.0, 1.0]], {'a': 0, 'b': 1}, 1.0)
    """
    correct = _as_probs(head_probs, "head_probs") > 0.5                          # [N, K]
    if correct.ndim != 2:
        raise MicroRMError(f"`head_probs` must be [N, K], got shape {correct.shape}")
    groups = attribute_groups(attributes, len(correct), single="all")
    names = sorted(set(groups))
    accuracy = np.stack([correct[groups == name].mean(axis=0) for name in names], axis=1)     # [K, A]
    best = accuracy.argmax(axis=0)
    return {"attributes": names, "accuracy": accuracy.tolist(),
            "best_head": {name: int(k) for name, k in zip(names, best)},
            "oracle_mean_accuracy": float(accuracy.max(axis=0).mean())}


def nll(probs: np.ndarray) -> float:
    """Mean negative log-likelihood −log p of the labelled winners (p clipped at 1e-12)."""
    return float(-np.log(np.clip(_as_probs(probs, "probs"), 1e-12, 1.0)).mean())


def expected_calibration_error(probs: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of pairwise probabilities, over equal-width confidence bins.

    A pair's prediction is the side given probability ≥ 0.5, its confidence max(p, 1 − p) and it
    is correct when p > 0.5 (``p`` is the probability of the labelled winner). ECE is the
    pair-weighted mean over bins of |accuracy − mean confidence|.

    >>> expected_calibration_error(np.array([0.9, 0.9, 0.2, 0.6]), bins=5)  # (2·0.1 + 0.8 + 0.4) / 4
    0.35
    """
    p = _as_probs(probs, "probs")
    confidence = np.maximum(p, 1.0 - p)                                     # in [0.5, 1]
    correct = (p > 0.5).astype(np.float64)
    index = np.minimum(((confidence - 0.5) * 2 * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(round(total / len(p), 12))


def router_statistics(weights: np.ndarray,
                      attributes: Optional[Sequence[Optional[str]]] = None) -> dict[str, Any]:
    """What a router does on a set of pairs, from its weights π [N, K] (rows sum to 1).

    Returns ``mean_entropy`` (nats; 0 = every pair routed to one head, log K = uniform),
    ``head_usage`` (the mean weight of each head: [K]), ``top_head_share`` (the fraction of pairs
    whose largest weight is each head: [K]) and ``per_attribute`` ({"attributes": names,
    "weights": mean weight rows [A, K]}; the router-weight heatmap of the report).

    >>> s = router_statistics(np.array([[1.0, 0.0], [0.5, 0.5]]), ["a", "b"])
    >>> round(s["mean_entropy"], 4), s["head_usage"], s["per_attribute"]["weights"]
    (0.3466, [0.75, 0.25], [[1.0, 0.0], [0.5, 0.5]])
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or len(w) == 0:
        raise MicroRMError(f"`weights` must be a non-empty [N, K] array, got shape {w.shape}")
    entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=1)
    top = np.bincount(w.argmax(axis=1), minlength=w.shape[1]) / len(w)
    groups = attribute_groups(attributes, len(w), single="all")
    names = sorted(set(groups))
    rows = [w[groups == name].mean(axis=0).tolist() for name in names]
    return {"mean_entropy": float(entropy.mean()), "head_usage": w.mean(axis=0).tolist(),
            "top_head_share": top.tolist(), "per_attribute": {"attributes": names, "weights": rows}}


def _as_probs(probs: np.ndarray, name: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        raise MicroRMError(f"`{name}` is empty: no pairs to evaluate")
    return probs


def attribute_groups(attributes: Optional[Sequence[Optional[str]]], n: int,
                     single: Optional[str] = None) -> Optional[np.ndarray]:
    """The group of each of ``n`` pairs as an object array: its attribute, or ``(none)`` for a pair
    without one when others have one. When no pair has one: None, or all in the group ``single`` if given.

    >>> attribute_groups(["a", None], 2).tolist(), attribute_groups([None, None], 2, single="all").tolist()
    (['a', '(none)'], ['all', 'all'])
    """
    if not attributes or all(a is None for a in attributes):
        return None if single is None else np.full(n, single, dtype=object)
    if len(attributes) != n:
        raise MicroRMError(f"`attributes` has {len(attributes)} entries for {n} pairs")
    return np.array([NO_ATTRIBUTE if a is None else str(a) for a in attributes], dtype=object)
