"""Held-out phrasings: does the router route a context it never saw like one with the same intent?

How ``data.contexts`` lists are cut (train, adapt, test) and reported: docs/personalization.md,
"Held-out phrasings in the harness". A pair's phrasing is chosen by a hash of its prompt; nothing
is chosen on the test phrasings.

>>> split_phrasings({"a": ["p0", "p1", "p2", "p3"]}, train=2, adapt=1)
({'a': ['p0', 'p1']}, {'a': ['p2']}, {'a': ['p3']})
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Sequence

import numpy as np

from micro_rm.experiment.state import Run, seed_std

Phrasings = dict[str, list[str]]


def split_phrasings(contexts: dict[str, Any], train: int, adapt: int) -> tuple[Phrasings, Phrasings, Phrasings]:
    """The (train, adapt, test) phrasings of each attribute that has a list of them (the config
    checked that every list has at least ``train + adapt + 1``)."""
    lists = {a: list(v) for a, v in contexts.items() if isinstance(v, list)}
    return ({a: v[:train] for a, v in lists.items()}, {a: v[train:train + adapt] for a, v in lists.items()},
            {a: v[train + adapt:] for a, v in lists.items()})


def with_phrasings(records: Sequence[dict[str, Any]], phrasings: Phrasings, salt: str) -> list[dict[str, Any]]:
    """Each record whose attribute has phrasings gets one of them as its context, chosen by a
    hash of (salt, prompt, attribute), so a prompt keeps its phrasing across its pairs."""
    out = []
    for record in records:
        options = phrasings.get(record.get("attribute"))
        if options:
            key = f"{salt}\n{record['prompt']}\n{record['attribute']}".encode("utf-8", "surrogatepass")
            record = {**record, "context": options[int(hashlib.sha256(key).hexdigest()[:8], 16) % len(options)]}
        out.append(record)
    return out


def heldout_phrasings(run: Run) -> None:
    """Step "held-out phrasings" (when ``data.contexts`` gives lists): stage 1 trained with the
    training phrasings, evaluated on the test split with the training and the held-out phrasings,
    then stage 2 from adapt-phrasing budgets."""
    if not any(isinstance(v, list) for v in run.config.data.contexts.values()):
        return
    featurize = functools.partial(run.feats, router_input="context")
    section, chosen = run.config.phrasings, run.chosen
    train_ph, adapt_ph, test_ph = split_phrasings(run.config.data.contexts, section.train, section.adapt)
    attributes = [a for a in run.attributes if a in test_ph]
    model, _ = run.fit(featurize(with_phrasings(run.train, train_ph, "train")), "micro",
                       balance=chosen["balance"], alpha=chosen["alpha"])
    test = [r for r in run.test if r.get("attribute") in test_ph]
    seen = run.evaluate(model, featurize(with_phrasings(test, train_ph, "test")))["mean"]
    held_features = [featurize([{**r, "context": test_ph[r["attribute"]][j % len(test_ph[r["attribute"]])]}
                                for r in test])
                     for j in range(max(len(v) for v in test_ph.values()))]
    held = [run.evaluate(model, f)["mean"] for f in held_features]
    pool = featurize(with_phrasings([r for r in run.pool if r.get("attribute") in adapt_ph], adapt_ph, "adapt"))
    stage2 = {}
    for budget in section.budgets:
        adapted = [run.adapt(model, budget, seed, pool=pool)[0] for seed in run.seeds()]
        means = [float(np.mean([run.evaluate(a, f)["mean"] for f in held_features])) for a in adapted]
        stage2[budget] = {"mean": float(np.mean(means)), "std": seed_std(means) or 0.0}
    zero_shot = float(np.mean(held))
    run.log(f"phrasings: training {seen:.3f}, held-out {zero_shot:.3f} (ratio {zero_shot / seen:.3f}); "
            + ", ".join(f"stage 2 B={b}: {v['mean']:.3f}" for b, v in stage2.items()))
    run.results["phrasings"] = {
        "attributes": attributes, "train": train_ph, "adapt": adapt_ph, "test": test_ph,
        "training_phrasings": seen, "heldout": zero_shot, "heldout_per_phrasing": held,
        "ratio": zero_shot / seen, "stage2": {str(b): v for b, v in stage2.items()}, "seeds": len(run.seeds())}
