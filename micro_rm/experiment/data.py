"""The harness's first two steps: the pairs (built, contexts filled, split by prompt, checked
against the budgets) and their features (each text encoded once through the feature cache)."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from typing import Any, Optional

from micro_rm.data.builders import build_pairs
from micro_rm.data.split import select_split
from micro_rm.errors import MicroRMError
from micro_rm.experiment.config import DataConfig, resolve_source
from micro_rm.experiment.state import Run
from micro_rm.features.backbones import load_backbone
from micro_rm.features.cache import FeatureCache
from micro_rm.features.featurize import featurize


def load_records(data: DataConfig, config_path: Optional[str]) -> list[dict[str, Any]]:
    """The pairs of one data section: built, then contexts filled from ``data.contexts``."""
    source = resolve_source(data.source, config_path) if data.source else data.source
    records = build_pairs(data.builder, source, skip_invalid=data.skip_invalid)
    if data.contexts:
        unknown = sorted(set(data.contexts) - {r.get("attribute") for r in records})
        if unknown:
            raise MicroRMError(f"data.contexts names attribute(s) {', '.join(unknown)} that no pair "
                               f"of {data.builder} has")
        for record in records:
            if not record.get("context") and record.get("attribute") in data.contexts:
                context = data.contexts[record["attribute"]]
                record["context"] = context[0] if isinstance(context, list) else context
    return records


def load_data(run: Run) -> None:
    """Step "data": the train, stage-2 pool and test splits, checked against the budgets and
    ``hyre.m`` before anything is encoded."""
    config = run.config
    source = load_records(config.data, config.path)
    target = load_records(config.eval_data, config.path) if config.eval_data else source
    run.cross = config.eval_data is not None
    run.train = select_split(source, "train")
    run.pool = select_split(target, "train") if run.cross else run.train
    run.test = select_split(target, "test")
    where = config.path or "config"
    for name, part in (("train", run.train), ("test", run.test), ("stage-2 train", run.pool)):
        if not part:
            raise MicroRMError(f"{where}: the {name} split of the data is empty; the canonical split "
                               "needs several distinct prompts")
    counts_test = Counter(r.get("attribute") for r in run.test)
    counts_pool = Counter(r.get("attribute") for r in run.pool)
    run.attributes = sorted(a for a in counts_test if a is not None)
    if not run.attributes:
        raise MicroRMError(f"{where}: the test pairs carry no `attribute`, so there is nothing to report "
                           "per attribute; use a builder that sets it")
    if None in counts_test:
        # One evaluation set for every method: the oracle, the budget and HyRe all need an attribute.
        run.test = [r for r in run.test if r.get("attribute") is not None]
        run.notes.append(f"{counts_test[None]} test pairs without an `attribute` are left out of every "
                         "method's accuracy (no attribute to report them under, to fit an oracle on or "
                         "to draw a budget from).")
    missing = [a for a in run.attributes if counts_pool.get(a, 0) == 0]
    if missing:
        raise MicroRMError(f"{where}: attribute(s) {', '.join(missing)} have test pairs but no train "
                           "pairs to draw the stage-2 budget from")
    smallest = min(run.attributes, key=lambda a: counts_pool[a])
    short = [a for a in run.attributes if counts_pool[a] < config.stage2.budget]
    if short:   # the rule of `micro-rm adapt` (draw_budget): a smaller group is used whole
        message = (f"stage2.budget = {config.stage2.budget} pairs per attribute is more than "
                   + ", ".join(f"{a!r} ({counts_pool[a]})" for a in short)
                   + " hold; all of their train pairs are used")
        warnings.warn(message, stacklevel=3)
        run.notes.append(message + ".")
    run.budgets = [b for b in config.budget_curve.budgets if b <= counts_pool[smallest]]
    skipped = [b for b in config.budget_curve.budgets if b > counts_pool[smallest]]
    if skipped:
        message = (f"budget curve: B = {', '.join(map(str, skipped))} skipped, more than attribute "
                   f"{smallest!r}'s {counts_pool[smallest]} train pairs")
        warnings.warn(message, stacklevel=3)
        run.notes.append(message + ".")
    small = min(run.attributes, key=lambda a: counts_test[a])
    if config.hyre.m >= counts_test[small]:
        raise MicroRMError(f"{where}: hyre.m = {config.hyre.m} labelled test pairs per attribute, but "
                           f"attribute {small!r} has only {counts_test[small]} test pairs; lower hyre.m")
    run.log(f"data: {len(run.train)} train pairs, {len(run.test)} test pairs, "
            f"{len(run.pool) if run.cross else 'same'} stage-2 pool; attributes {', '.join(run.attributes)}")


def encode(run: Run) -> None:
    """Step "encode": the features of every split and protocol the later steps read; ``run.feats``
    featurizes more records (new phrasings, other views) through the same cache."""
    b = run.config.backbone
    backbone = run.backbone_arg if run.backbone_arg is not None else b.name
    if isinstance(backbone, str):
        run.backbone_name = backbone
        backbone = load_backbone(backbone, max_length=b.max_length, device=run.device, batch_size=b.batch_size)
    else:
        run.backbone_name = getattr(backbone, "name", "custom")
    cache = FeatureCache(run.cache_dir)
    start, encoded = time.perf_counter(), 0

    def feats(records, router_input, context_in_reward=b.context_in_reward):
        nonlocal encoded
        features, stats = featurize(records, backbone, cache, router_input=router_input,
                                    context_in_reward=context_in_reward, batch_size=b.batch_size,
                                    progress=run.progress)
        encoded += stats.encoded
        return features

    run.feats = feats                        # later steps featurize new phrasings / views
    protocols = list(dict.fromkeys(v.protocol for v in run.config.stage1.variants))
    run.train_feats = {p: feats(run.train, p) for p in protocols}
    run.test_feats = {p: feats(run.test, p) for p in protocols}
    run.test_ctx = run.test_feats.get("context") or feats(run.test, "context")
    run.pool_ctx = (feats(run.pool, "context") if run.cross or "context" not in run.train_feats
                    else run.train_feats["context"])
    # single-ctx / static-ctx only when the train pairs have contexts that the plain baselines do not see
    if not b.context_in_reward and any(r.get("context") for r in run.train):
        run.train_reward_ctx = feats(run.train, "context", context_in_reward=True)
        run.test_reward_ctx = feats(run.test, "context", context_in_reward=True)
    else:
        run.train_reward_ctx = run.test_reward_ctx = None
        run.notes.append("No single-ctx / static-ctx rows: " + (
            "every baseline already sees the context in its reward features (backbone.context_in_reward)."
            if b.context_in_reward else "no train pair has a context, so they would repeat single / static."))
    run.encode_seconds, run.encoded = time.perf_counter() - start, encoded
    run.log(f"features: {encoded} texts encoded ({run.encode_seconds:.0f} s), the rest from the cache")
