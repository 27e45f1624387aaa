"""Describe each head of a model on a pair set: what it rewards, where it is accurate, where it
stands alone, and which heads repeat one another. Everything is measured on reward differences
within a pair (as in the BT likelihood); intervals are 95% bootstrap intervals over prompts.

>>> profile = profile_heads(model, features, records)            # doctest: +SKIP
>>> profile["labels"]                                             # doctest: +SKIP
['prefers figurative, lexically varied answers', 'prefers short, action-oriented answers', ...]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import rankdata

from micro_rm.data.records import prompt_key, render_text
from micro_rm.errors import MicroRMError
from micro_rm.eval.bootstrap import PromptBootstrap, percentile_interval
from micro_rm.eval.metrics import head_attribute_matrix, pairwise_accuracy
from micro_rm.features.base import PairFeatures
from micro_rm.heads.agreement import agreement_clusters, agreement_matrix, cluster_order
from micro_rm.heads.labels import generate_labels
from micro_rm.heads.stats import STATISTICS, response_statistics
from micro_rm.model.mixture import MixtureRewardModel

EXAMPLES = 3              # contrastive pairs shown per head
EXCERPT = 400             # characters of a text shown in an example
CLUSTER_AGREEMENT = 0.9   # heads agreeing on this share of pairs are reported as one cluster


def head_deltas(model: MixtureRewardModel, features: PairFeatures) -> np.ndarray:
    """Each head's reward difference chosen − rejected of each pair: [N, K]."""
    return model.rewards(features.chosen) - model.rewards(features.rejected)


def profile_heads(model: MixtureRewardModel, features: PairFeatures, records: Sequence[dict[str, Any]], *,
                  resamples: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The profile of every head on ``records`` (aligned with ``features``): a JSON-ready dict with
    ``accuracy`` (per attribute, with intervals), ``statistics`` (Spearman ρ of each head's reward
    difference with each statistic's, intervals, and each head's ``lead`` over the others),
    ``agreement`` (matrix, clustered order, clusters), ``examples`` and ``labels``."""
    if len(records) != len(features):
        raise MicroRMError(f"{len(records)} records but {len(features)} feature rows; featurize the same records")
    deltas = head_deltas(model, features)                                             # [N, K]
    prompts = [prompt_key(r) for r in records]
    boot = PromptBootstrap(prompts, features.attributes, resamples=resamples, seed=seed)
    texts = [render_text(r[side]) for side in ("chosen", "rejected") for r in records]
    both = response_statistics(texts, prompts * 2, progress=progress)                  # [2N, S]
    stats = both[:len(records)] - both[len(records):]                                 # [N, S]
    rho, rho_samples = _spearman(deltas, stats, boot.prompt_of, boot.counts)           # [K, S], [R, K, S]
    lead, lead_samples = _lead(rho), _lead(rho_samples)
    agreement = agreement_matrix(deltas)
    profile = {
        "num_heads": int(deltas.shape[1]), "pairs": len(records), "masked_heads": list(model.config.masked_heads),
        "routed": pairwise_accuracy(model.predict_proba(features.chosen, features.rejected, features.route),
                                    features.attributes),
        "usage": model.router_weights(features.route).mean(0).round(4).tolist(),
        "accuracy": _accuracy(deltas, features.attributes, boot),
        "statistics": {
            "names": [s.name for s in STATISTICS], "groups": [s.group for s in STATISTICS],
            "descriptions": [s.description for s in STATISTICS],
            "spearman": rho.round(4).tolist(), "lead": lead.round(4).tolist(),
            "spearman_ci95": _intervals(rho_samples), "lead_ci95": _intervals(lead_samples)},
        "agreement": {"matrix": agreement.round(4).tolist(), "order": cluster_order(agreement),
                      "clusters": agreement_clusters(agreement, CLUSTER_AGREEMENT),
                      "cluster_min_agreement": CLUSTER_AGREEMENT},
        "examples": [_examples(deltas, k, records) for k in range(deltas.shape[1])],
    }
    profile["labels"] = generate_labels(profile)
    return profile


def _accuracy(deltas: np.ndarray, attributes: Sequence[Any], boot: PromptBootstrap) -> dict[str, Any]:
    """Each head's accuracy per attribute with 95% intervals: ``attributes``, ``accuracy`` [K, A],
    ``ci95`` [K, A, 2], ``mean`` [K], ``best_head``."""
    matrix = head_attribute_matrix(1.0 / (1.0 + np.exp(-deltas)), attributes)
    ci = []
    for k in range(deltas.shape[1]):
        per_attribute = boot.intervals(boot.samples((deltas[:, k] > 0).astype(float)))["per_attribute_ci95"]
        ci.append([per_attribute[a] for a in matrix["attributes"]])
    return {"attributes": matrix["attributes"], "accuracy": np.round(matrix["accuracy"], 4).tolist(), "ci95": ci,
            "mean": np.round(np.mean(matrix["accuracy"], axis=1), 4).tolist(), "best_head": matrix["best_head"]}


def _spearman(deltas: np.ndarray, stats: np.ndarray, prompt_of: np.ndarray,
              counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation [K, S] of the columns of ``deltas`` [N, K] with those of ``stats``
    [N, S], and its bootstrap draws [R, K, S] when prompt p is drawn ``counts[r, p]`` times
    (``prompt_of`` [N]). A draw reweights ranks taken once, with moments summed per prompt, so
    memory grows with prompts, not pairs. A constant statistic correlates 0."""
    x, y = rankdata(deltas, axis=0), rankdata(stats, axis=0)                          # [N, K], [N, S]
    n, k = x.shape
    member = csr_matrix((np.ones(n), (prompt_of, np.arange(n))), shape=(counts.shape[1], n))   # [P, N]
    xy = np.hstack([member @ (x[:, [j]] * y) for j in range(k)])                     # [P, K·S]
    moments = [member @ np.ones(n), member @ x, member @ y, member @ x ** 2, member @ y ** 2, xy]

    def weighted(w: np.ndarray) -> np.ndarray:                                        # [R, P] → [R, K, S]
        total, sx, sy, sxx, syy, sxy = (w @ m for m in moments)
        total = total[:, None]
        mx, my = sx / total, sy / total                                               # [R, K], [R, S]
        cov = sxy.reshape(len(w), k, -1) / total[:, :, None] - mx[:, :, None] * my[:, None, :]
        vx, vy = sxx / total - mx ** 2, syy / total - my ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = cov / np.sqrt(vx[:, :, None] * vy[:, None, :])
        return np.where(np.isfinite(rho), np.clip(rho, -1.0, 1.0), 0.0)

    return weighted(np.ones((1, counts.shape[1])))[0], weighted(counts)


def _lead(rho: np.ndarray) -> np.ndarray:
    """How far each head stands apart from the others on each statistic ([..., K, S]): its
    correlation minus the highest other head's where it is the highest (> 0), minus the lowest
    other's where it is the lowest (< 0), else 0 (one head: the correlation). It names the head."""
    k = rho.shape[-2]
    if k == 1:
        return rho
    lead = np.zeros_like(rho)
    for head in range(k):
        others = np.delete(rho, head, axis=-2)
        above = rho[..., head, :] - others.max(-2)
        below = rho[..., head, :] - others.min(-2)
        lead[..., head, :] = np.where(above > 0, above, np.where(below < 0, below, 0.0))
    return lead


def _intervals(samples: np.ndarray) -> list[list[list[float]]]:
    """[K][S] → [lo, hi] from bootstrap draws [R, K, S]."""
    return [[percentile_interval(samples[:, k, s]) for s in range(samples.shape[2])]
            for k in range(samples.shape[1])]


def _examples(deltas: np.ndarray, k: int, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs on which head ``k`` disagrees most with the mean of the other heads (its
    preference probability minus theirs), with the text each side prefers."""
    if deltas.shape[1] == 1:
        return []
    probs = 1.0 / (1.0 + np.exp(-deltas))
    others = (probs.sum(1) - probs[:, k]) / (deltas.shape[1] - 1)
    gap = probs[:, k] - others
    disagree = np.flatnonzero((probs[:, k] > 0.5) != (others > 0.5))
    out, seen = [], set()
    for i in disagree[np.argsort(-np.abs(gap[disagree]), kind="stable")]:
        record = records[int(i)]
        key = prompt_key(record)
        if key in seen:                       # one pair per prompt: show different situations
            continue
        seen.add(key)
        chosen, rejected = render_text(record["chosen"]), render_text(record["rejected"])
        head_wins = deltas[i, k] > 0
        out.append({"pair": int(i), "attribute": record.get("attribute"), "prompt": _excerpt(key),
                    "head_prefers": _excerpt(chosen if head_wins else rejected),
                    "others_prefer": _excerpt(rejected if head_wins else chosen),
                    "head_agrees_with_label": bool(head_wins),
                    "head_p": round(float(probs[i, k]), 4), "others_p": round(float(others[i]), 4)})
        if len(out) == EXAMPLES:
            break
    return out


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[:EXCERPT].rstrip() + " …"
