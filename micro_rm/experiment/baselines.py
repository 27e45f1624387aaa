"""The rows MiCRo is compared with (same K: single, static, shared-base and their ``-ctx`` twins;
HyRe, MiCRo-HyRe; the oracle), and what each method was given (the Supervision column)."""

from __future__ import annotations

from typing import Any

import numpy as np

from micro_rm.eval.hyre import evaluate_hyre
from micro_rm.experiment.state import Run, evaluation, row


def supervision_labels(run: Run) -> None:
    """Step "supervision": what each method was given, in words. A context sentence that is the
    same on every pair of an attribute and differs between attributes tells the model the
    attribute of each pair: it is said to be equivalent to attribute labels."""
    config, chosen = run.config, run.chosen
    contexts: dict[Any, set[str]] = {}
    for record in run.train:
        if record.get("context"):
            contexts.setdefault(record.get("attribute"), set()).add(record["context"])
    covered = sum(bool(r.get("context")) for r in run.train)
    where = "every train pair" if covered == len(run.train) else f"{covered / len(run.train):.0%} of train pairs"
    if None not in contexts and all(len(c) == 1 for c in contexts.values()) \
            and len(set().union(*contexts.values())) == len(contexts):
        context = f"one context sentence per attribute on {where} (≡ attribute labels)"
    else:
        context = f"each pair's context sentence on {where}"
    m, budget = config.hyre.m, config.stage2.budget
    given = f"binary pairs + {context}"
    in_reward = f"{given}, in the reward features"
    plain = in_reward if contexts and config.backbone.context_in_reward else "binary pairs, no context"
    stage1 = f"{given}, read by the router" if contexts and chosen["protocol"] == "context" else plain
    if chosen["protocol"] == "context" and not run.cross:
        stage2 = f"micro-stage1 + stage 2 on B = {budget} of the same train pairs / attribute (seen at stage 1)"
    else:
        source = f"{config.eval_data.builder}'s" if run.cross else "the"
        kind = "context pairs" if any(r.get("context") for r in run.pool) else "pairs (no context)"
        stage2 = f"micro-stage1 + B = {budget} {kind} / attribute from {source} train split"
    run.labels = {"single": plain, "static": plain, "shared-base": plain,
                  "single-ctx": in_reward, "static-ctx": in_reward,
                  "hyre": f"{plain} + {m} labelled test pairs / attribute (scored on the other test prompts)",
                  "micro-hyre": f"micro-stage1 + {m} labelled test pairs / attribute (scored on the other test prompts)",
                  "micro-stage1": stage1, "micro": stage2,
                  "oracle": "attribute labels on every train pair (one BT head per attribute)"}


def fit_baselines(run: Run) -> None:
    """Step "baselines": single, static and shared-base on binary pairs; single-ctx and static-ctx
    with the context in their reward features (MiCRo's router reads it, so these get the same
    information)."""
    features = next(iter(run.train_feats.values()))
    test = next(iter(run.test_feats.values()))
    runs = [(name, name, features, test) for name in ("single", "static")]
    if run.train_reward_ctx is not None:
        runs += [(f"{name}-ctx", name, run.train_reward_ctx, run.test_reward_ctx) for name in ("single", "static")]
    for name, variant, train_features, test_features in runs:
        model, _ = run.fit(train_features, variant)
        run.methods[name] = row(run.evaluate(model, test_features), run.labels[name])
        run.log(f"{name}: {run.methods[name]['mean']:.3f}")
    shared, _ = run.fit(features, "shared-base")
    # Best head chosen on the pooled *train* pairs (no attribute or test label), then scored on test.
    train_acc = (shared.head_probs(features.chosen, features.rejected) > 0.5).mean(axis=0)
    best = int(np.argmax(train_acc))
    probs = shared.head_probs(test.chosen, test.rejected)[:, best]
    run.methods["shared-base"] = row(evaluation(probs, test.attributes),
                                     f"{run.labels['shared-base']} (head {best}: best on train pairs)")
    run.shared = shared
    run.log(f"shared-base (head {best}): {run.methods['shared-base']['mean']:.3f}")


def hyre_rows(run: Run) -> None:
    """Step "hyre": HyRe on the shared-base heads and on the chosen variant's stage-1 heads, over the seeds."""
    m = run.config.hyre.m
    for name, model in (("hyre", run.shared), ("micro-hyre", run.chosen["model"])):
        draws = [evaluate_hyre(model, run.test_ctx, m=m, seed=seed) for seed in run.seeds()]
        per = {a: float(np.mean([d["per_attribute"][a] for d in draws])) for a in draws[0]["per_attribute"]}
        scored = np.zeros((len(draws), len(run.test_ctx)), dtype=bool)
        correct = np.zeros_like(scored)
        for s, draw in enumerate(draws):
            scored[s, draw["scored"]], correct[s, draw["scored"]] = True, draw["probs"] > 0.5
        run.methods[name] = {"mean": float(np.mean(list(per.values()))), "per_attribute": per,
                             "supervision": run.labels[name], "outcome": (correct, scored)}
        run.log(f"{name}: {run.methods[name]['mean']:.3f}")


def oracle_row(run: Run) -> None:
    """Step "oracle" (when ``oracle: true``): one BT head per attribute on all of that attribute's
    train pairs, scored on its test pairs."""
    if not run.config.oracle:
        return
    test_attr = np.array(run.test_ctx.attributes, dtype=object)
    pool_attr = np.array(run.pool_ctx.attributes, dtype=object)
    probs = np.zeros(len(run.test_ctx))
    for attribute in run.attributes:
        train = run.pool_ctx.subset(np.flatnonzero(pool_attr == attribute))
        fraction = run.config.stage1.val_fraction if len(set(train.prompts)) >= 10 else 0.0
        model, _ = run.fit(train, "single", val_fraction=fraction)
        rows = np.flatnonzero(test_attr == attribute)
        test = run.test_ctx.subset(rows)
        probs[rows] = model.predict_proba(test.chosen, test.rejected, test.route)
    run.methods["oracle"] = row(evaluation(probs, run.test_ctx.attributes), run.labels["oracle"])
    run.log(f"oracle: {run.methods['oracle']['mean']:.3f}")
