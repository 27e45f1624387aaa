"""Stage 2: adapt the router to user contexts from a small budget of labelled pairs, the heads
frozen. The router changes only when cross-validation on the budget shows it helps
(:mod:`micro_rm.train.selection`; docs/personalization.md §4).

>>> rows = draw_budget(features.attributes, budget=50, seed=0)                  # doctest: +SKIP
>>> adapted, info = adapt(model, features.subset(rows), AdaptConfig())          # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.train.config import AdaptConfig

if TYPE_CHECKING:
    from micro_rm.features.base import PairFeatures
    from micro_rm.model.mixture import MixtureRewardModel


def adapt(model: "MixtureRewardModel", features: "PairFeatures", config: Optional[AdaptConfig] = None, *,
          progress: bool = False) -> tuple["MixtureRewardModel", dict[str, Any]]:
    """Stage 2 on every row of ``features`` (the budget: :func:`draw_budget`), whose route
    features carry the contexts. Returns a new model (the input is untouched; same heads) and
    ``info``: ``tau`` (the chosen τ, or ``"keep"``), ``update`` and ``wordings`` (the chosen
    candidate's kinds), ``cv_nll`` ({candidate name: cross-validated mixture NLL}),
    ``stage1_nll`` and ``nll`` (mixture NLL of the budget before and after), ``epochs`` (one
    row per step), ``pairs`` and ``seconds``."""
    from micro_rm.train.selection import (KEEP, candidate_name, choose_candidate, cross_validate, cv_folds,
                                          fit_candidate, mixture_nll)
    from micro_rm.train.stage1 import _small_tensor_cpu, check_features

    config = config or AdaptConfig()
    check_adaptable(model)
    check_features(features)
    model.check_features(features)
    start = time.perf_counter()
    deltas, route = model.frozen_deltas(features)                        # heads are frozen: Δ is data
    with _small_tensor_cpu(str(route.device)):
        stage1_nll = mixture_nll(model, route, deltas).mean().item()
        fold, clusters = cv_folds(model, route, features.prompts, features.attributes, config.folds, config.seed)
        cv_nll = cross_validate(model, route, deltas, fold, config.tau, config.seed, progress=progress)
        candidate = choose_candidate(cv_nll, clusters)
        adapted, epochs = copy.deepcopy(model), []
        update, tau, wordings = ("heads", KEEP, "prototypes") if candidate == KEEP else candidate
        if candidate != KEEP:
            epochs = fit_candidate(adapted, route, deltas, candidate, config.seed, progress=progress)
    nll = epochs[-1]["nll"] if epochs else stage1_nll
    cv = {candidate_name(c): float(v.mean()) for c, v in cv_nll.items()}
    info = {"tau": tau, "update": update, "wordings": wordings, "cv_nll": cv, "stage1_nll": stage1_nll,
            "nll": nll, "epochs": epochs, "pairs": len(features), "seconds": time.perf_counter() - start}
    adapted.config.feature["router_input"] = "context"               # a deep copy: model.config is untouched
    adapted.config.training["stage2"] = {**dataclasses.asdict(config), "tau_chosen": tau, "update_chosen": update,
                                         "wordings_chosen": wordings, "cv_nll": cv}
    adapted.config.data["stage2_pairs"] = len(features)
    adapted.config.metrics.update(stage2_budget_nll=nll, stage2_budget_nll_before=stage1_nll)
    return adapted.eval(), info


def adapt_from_records(model: "MixtureRewardModel", records: Sequence[Mapping[str, Any]],
                       config: Optional[AdaptConfig] = None, *, cache_dir: Optional[str | os.PathLike] = None,
                       allow_encode: bool = True, progress: bool = True,
                       device: str = "cpu") -> tuple["MixtureRewardModel", dict[str, Any]]:
    """Stage 2 from pair records with a ``context`` (what ``micro-rm adapt`` and ``MiCRo.adapt``
    run): draw the budget, featurize it as the model reads it (routed on the context, whatever
    stage 1's router input was) with the backbone on ``device``, through the feature cache at
    ``cache_dir``, and :func:`adapt`. ``info`` also holds ``pairs_per_group`` ({group: pairs})."""
    from micro_rm.model.text import featurize_for

    config = config or AdaptConfig()
    check_adaptable(model)
    missing = [i for i, r in enumerate(records) if not r.get("context")]
    if missing:
        raise MicroRMError(f"{len(missing)} of {len(records)} pairs have no `context` (the first is record "
                           f"{missing[0] + 1}); stage 2 routes on context + prompt, so give every pair its "
                           "context (e.g. the attribute's criterion sentence)")
    chosen = [records[i] for i in draw_budget(records, config.budget, config.seed)]
    on_context = copy.copy(model)                 # stage 2 always routes on the context
    on_context.config = dataclasses.replace(model.config, feature={**model.config.feature, "router_input": "context"})
    features = featurize_for(on_context, chosen, cache_dir, allow_encode=allow_encode, progress=progress,
                             device=device)
    adapted, info = adapt(model, features, config, progress=progress)
    groups = budget_groups(chosen)
    info["pairs_per_group"] = {str(g): groups.count(g) for g in sorted(set(groups), key=str)}
    return adapted, info


def check_adaptable(model: "MixtureRewardModel") -> None:
    """Raise :class:`MicroRMError` unless ``model`` has a router to adapt (variant ``micro``)."""
    if model.config.variant != "micro":
        raise MicroRMError(f"stage 2 adapts a router, and a {model.config.variant!r} model has none "
                           "(a static mixture keeps its fixed weights at stage 2, a single head or an "
                           "ensemble has nothing to route); train stage 1 with --variant micro")


def budget_groups(records: Sequence[Mapping[str, Any]]) -> list[Optional[str]]:
    """The group each record's budget is drawn in: its ``attribute``, or its ``context`` when no
    record has an attribute.

    >>> budget_groups([{"context": "be brief"}, {"context": "be thorough"}])
    ['be brief', 'be thorough']
    """
    key = "attribute" if any(r.get("attribute") is not None for r in records) else "context"
    return [r.get(key) for r in records]


def draw_budget(records_or_groups: Sequence[Any], budget: int, seed: int) -> np.ndarray:
    """Sorted row indices of ``budget`` rows per group, drawn with ``seed``.

    ``records_or_groups``: one group label (str or None) per row, or the pair records (grouped by
    :func:`budget_groups`). A group's draw depends only on the seed, its name and its rows, so
    adding a group leaves the others' draws alone. A smaller group is used whole, with a warning.

    >>> draw_budget(["a", "a", "a", "b"], budget=2, seed=0).tolist()     # doctest: +SKIP
    [0, 2, 3]
    """
    groups = list(records_or_groups)
    if groups and isinstance(groups[0], Mapping):
        groups = budget_groups(groups)
    rows: dict[Optional[str], list[int]] = {}
    for i, group in enumerate(groups):
        rows.setdefault(group, []).append(i)
    chosen, short = [], []
    for group, index in sorted(rows.items(), key=lambda item: (item[0] is None, str(item[0]))):
        if len(index) <= budget:
            chosen.append(np.asarray(index))
            if len(index) < budget:
                short.append(f"{group!r} ({len(index)})")
            continue
        name_hash = int(hashlib.sha256(str(group).encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([seed, name_hash])
        chosen.append(rng.choice(np.asarray(index), size=budget, replace=False))
    if short:
        warnings.warn(f"budget {budget} per group is more than {len(short)} group(s) hold: "
                      f"{', '.join(short)}; using all of their pairs (pass a smaller --budget to "
                      "silence this)", stacklevel=2)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
