"""Choose the number of heads K from data: fit a grid of K and keep the smallest K whose validation
NLL is within one standard error of the best (a larger K fits at least as well but spends routing
budget; METHOD.md). Validation pairs are :func:`micro_rm.train.stage1.validation_split`'s held-out
prompts, and the standard error is taken over prompts (pairs of one prompt are not independent).

>>> model, history, curve = select_heads(features, Stage1Config(epochs=10), grid=range(1, 7))  # doctest: +SKIP
>>> curve["chosen"], curve["nll"]                                                              # doctest: +SKIP
(4, [0.69, 0.61, 0.55, 0.52, 0.52, 0.52])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.model.mixture import MixtureRewardModel
from micro_rm.train.config import Stage1Config
from micro_rm.train.selection import mixture_nll
from micro_rm.train.stage1 import fit_stage1, validation_split

DEFAULT_GRID = tuple(range(1, 9))


def validation_nll(model: MixtureRewardModel, features: PairFeatures, index: np.ndarray) -> tuple[float, float]:
    """Mean NLL of the pairs ``index`` and its standard error over their prompts."""
    held = features.subset(index)
    deltas, route = model.frozen_deltas(held)
    losses = mixture_nll(model, route, deltas).cpu().numpy()
    _, prompt_of = np.unique(np.asarray(held.prompts, dtype=object).astype(str), return_inverse=True)
    per_prompt = np.bincount(prompt_of, weights=losses) / np.bincount(prompt_of)
    # the mean over pairs, with the spread of prompt means as the unit of sampling
    se = float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))) if len(per_prompt) > 1 else float("nan")
    return float(losses.mean()), se


def one_standard_error(grid: Sequence[int], nll: Sequence[float], se: Sequence[float]) -> int:
    """The smallest K whose NLL is at most the best NLL plus the best's standard error.

    >>> one_standard_error([1, 2, 3, 4], [0.70, 0.55, 0.54, 0.53], [0.01, 0.01, 0.01, 0.02])
    2
    """
    best = int(np.argmin(nll))
    limit = nll[best] + (se[best] if np.isfinite(se[best]) else 0.0)
    return min(k for k, value in zip(grid, nll) if value <= limit)


def select_heads(features: PairFeatures, config: Stage1Config, grid: Sequence[int] = DEFAULT_GRID, *,
                 progress: bool = True) -> tuple[MixtureRewardModel, dict[str, Any], dict[str, Any]]:
    """Fit ``config`` with each K of ``grid``; return the chosen model, its training history and
    the curve (``grid``, ``nll``, ``se``, ``chosen``, ``best``)."""
    grid = sorted(set(grid))
    if config.variant not in ("micro", "static"):
        raise MicroRMError(f"--heads auto chooses K for a mixture; variant {config.variant!r} has no K to choose")
    if config.val_fraction == 0 or not grid or grid[0] < 1:
        raise MicroRMError("--heads auto needs a validation split (--val-fraction > 0) and a grid of K ≥ 1")
    _, held = validation_split(features.prompts, config.val_fraction)
    if len(held) == 0:
        raise MicroRMError("--heads auto: the validation split is empty; raise --val-fraction")
    fits = [fit_stage1(features, dataclasses.replace(config, heads=k), progress=progress) for k in grid]
    nll, se = zip(*(validation_nll(model, features, held) for model, _ in fits))
    chosen = one_standard_error(grid, nll, se)
    curve = {"grid": grid, "nll": [round(v, 6) for v in nll], "se": [round(v, 6) for v in se],
             "best": grid[int(np.argmin(nll))], "chosen": chosen, "validation_pairs": int(len(held)),
             "rule": "smallest K within one standard error (over prompts) of the lowest validation NLL"}
    model, history = fits[grid.index(chosen)]
    return model, history, curve
