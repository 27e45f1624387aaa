"""95% bootstrap intervals for accuracies, resampling prompts rather than pairs.

Pairs of one prompt share its text (and on DSP its responses), so they are not independent:
resampling pairs would give intervals that are too narrow. :class:`PromptBootstrap` draws the
test prompts once and scores every method on the same draws, so the difference of two methods
has its own (paired) interval.

>>> boot = PromptBootstrap(prompts, attributes)                       # doctest: +SKIP
>>> a, b = boot.samples(correct_a), boot.samples(correct_b)           # doctest: +SKIP
>>> percentile_interval(a["mean"] - b["mean"])                        # doctest: +SKIP
[0.031, 0.072]
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.eval.metrics import attribute_groups

RESAMPLES = 1000
LEVEL = 0.95


def percentile_interval(samples: np.ndarray) -> list[float]:
    """The central :data:`LEVEL` percentile interval [lo, hi] of bootstrap ``samples`` (NaN ignored).

    >>> percentile_interval(np.arange(101) / 100)
    [0.025, 0.975]
    """
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.nanpercentile(np.asarray(samples, dtype=np.float64), [tail, 100 - tail])
    return [round(float(lo), 6), round(float(hi), 6)]


def excludes_zero(interval: Sequence[float]) -> bool:
    """Whether a difference's interval lies wholly on one side of 0 (the difference is resolved).

    >>> excludes_zero([0.01, 0.03]), excludes_zero([-0.01, 0.03])
    (True, False)
    """
    return interval[0] > 0 or interval[1] < 0


class PromptBootstrap:
    """``resamples`` draws of the test prompts with replacement (seeded, so reruns give the same
    intervals), shared by every method scored. ``prompts`` [N]: each test pair's prompt, the unit
    resampled (``prompt_of`` [N]: its column in ``counts`` [R, P]); ``attributes`` [N]: its
    attribute (None: the "(none)" group; all None: one group)."""

    def __init__(self, prompts: Sequence[Any], attributes: Optional[Sequence[Optional[str]]] = None, *,
                 resamples: int = RESAMPLES, seed: int = 0):
        if len(prompts) == 0:
            raise MicroRMError("the bootstrap needs at least one test pair")
        groups = attribute_groups(attributes, len(prompts), single="all")
        self.attributes, attribute_of = np.unique(groups.astype(str), return_inverse=True)
        distinct, self.prompt_of = np.unique(np.asarray(prompts, dtype=object).astype(str), return_inverse=True)
        # cell of each pair in the prompt × attribute table the resample weights act on
        self.cell = self.prompt_of * len(self.attributes) + attribute_of
        self.shape = (len(distinct), len(self.attributes))
        # how often each prompt is drawn in each resample: [R, P]
        self.counts = np.random.default_rng(seed).multinomial(
            len(distinct), np.full(len(distinct), 1 / len(distinct)), size=resamples).astype(np.float64)

    def samples(self, correct: np.ndarray, scored: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Resampled accuracies of one method: ``per_attribute`` [R, A] (columns in
        ``self.attributes`` order) and their unweighted ``mean`` [R], as the tables report.

        ``correct`` is [N] (one run) or [S, N] (S runs, e.g. budget draws: the statistic is their
        mean); ``scored`` (same shape, bool) marks the pairs each run scored (HyRe leaves its
        labelled prompts out)."""
        correct = np.atleast_2d(np.asarray(correct, dtype=np.float64))                  # [S, N]
        scored = np.ones_like(correct) if scored is None else np.atleast_2d(scored).astype(np.float64)
        if correct.shape != scored.shape or correct.shape[1] != len(self.cell):
            raise MicroRMError(f"`correct` and `scored` must be [N] or [S, N] with N = {len(self.cell)} test "
                               f"pairs, got {correct.shape} and {scored.shape}")
        size = self.shape[0] * self.shape[1]
        runs = []
        for c, s in zip(correct, scored):
            hits = np.bincount(self.cell, weights=c * s, minlength=size).reshape(self.shape)    # [P, A]
            pairs = np.bincount(self.cell, weights=s, minlength=size).reshape(self.shape)       # [P, A]
            with np.errstate(invalid="ignore", divide="ignore"):
                runs.append((self.counts @ hits) / (self.counts @ pairs))                       # [R, A]
        per_attribute = np.mean(runs, axis=0)
        return {"per_attribute": per_attribute, "mean": per_attribute.mean(axis=1)}

    def intervals(self, samples: dict[str, np.ndarray]) -> dict[str, Any]:
        """``ci95`` of the mean and ``per_attribute_ci95`` ({attribute: [lo, hi]}) of ``samples``."""
        return {"ci95": percentile_interval(samples["mean"]),
                "per_attribute_ci95": {str(a): percentile_interval(samples["per_attribute"][:, j])
                                       for j, a in enumerate(self.attributes)}}
