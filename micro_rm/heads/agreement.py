"""How often two heads pick the same winner (their reward differences have the same sign), and
the groups of heads that (nearly) always do: one preference twice, to merge (:mod:`micro_rm.heads.merge`).

>>> agreement_matrix(np.array([[1.0, 2.0, -1.0], [1.0, 0.5, 1.0]])).tolist()
[[1.0, 1.0, 0.5], [1.0, 1.0, 0.5], [0.5, 0.5, 1.0]]
>>> agreement_clusters(np.array([[1, .95, .2], [.95, 1, .3], [.2, .3, 1]]), 0.9)
[[0, 1], [2]]
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform


def agreement_matrix(deltas: np.ndarray) -> np.ndarray:
    """Fraction of pairs on which heads k and j pick the same winner: ``deltas`` [N, K] → [K, K]."""
    signs = np.sign(np.asarray(deltas, dtype=np.float64))                          # [N, K]
    agreement = (1.0 + signs.T @ signs / max(len(signs), 1)) / 2.0                 # a tie counts 1/2
    np.fill_diagonal(agreement, 1.0)                                               # even on ties
    return agreement


def agreement_clusters(agreement: np.ndarray, min_agreement: float) -> list[list[int]]:
    """Groups of heads in which every two heads agree on at least ``min_agreement`` of the
    pairs (complete linkage, so a chain of pairwise-similar heads is not merged), each sorted,
    ordered by their first head."""
    k = len(agreement)
    if k == 1:
        return [[0]]
    distance = squareform(np.clip(1.0 - agreement, 0.0, None), checks=False)
    labels = fcluster(linkage(distance, method="complete"), t=1.0 - min_agreement + 1e-12, criterion="distance")
    return sorted(np.flatnonzero(labels == label).tolist() for label in np.unique(labels))


def cluster_order(agreement: np.ndarray) -> list[int]:
    """The heads in the leaf order of an average-linkage tree, so similar heads sit together in
    the agreement heatmap."""
    if len(agreement) <= 2:
        return list(range(len(agreement)))
    distance = squareform(np.clip(1.0 - agreement, 0.0, None), checks=False)
    return [int(i) for i in leaves_list(linkage(distance, method="average"))]
