"""Choose the router's defaults on validation data only: held-out *train* prompts and phrasings.

The canonical train split is cut again by prompt (20 % held out, salted hash). Stage 1 trains on
the rest with each attribute's first two phrasings (configs/<name>.yaml, `data.contexts`, as the
harness does) and is scored on the held-out prompts under phrasings 3–4, which it never saw.
Stage 2 draws B pairs per attribute carrying phrasing 3 from the training prompts and is scored
under phrasing 4 (unseen by both stages). The test phrasings 5–8 and the test split are never
read. Printed: validation accuracy per context temperature T and per context-dropout rate
(stage 1), and of stage 2 (safe and paper algorithms) at B = 10, 50 and 200 (3 draws).
`CANDIDATE_T=0.1 CANDIDATE_DROPOUT=0.1` restrict the grids.

    python benchmarks/validate_defaults.py dsp        # needs ../shared/data (or $MICRO_RM_DATA)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings

import numpy as np

CANDIDATE_T = tuple(float(t) for t in os.environ.get("CANDIDATE_T", "0.01,0.02,0.05,0.1,0.2").split(","))
CANDIDATE_DROPOUT = tuple(float(r) for r in os.environ.get("CANDIDATE_DROPOUT", "0,0.1,0.3").split(","))
ALGORITHMS = tuple(("safe", float(m)) for m in os.environ.get("KEEP_MARGINS", "1,2").split(",")) + (("paper", 0.0),)


def main(name: str) -> None:
    from micro_rm.data.split import select_split
    from micro_rm.eval import pairwise_accuracy
    from micro_rm.experiment.config import ExperimentConfig
    from micro_rm.experiment.phrasings import with_phrasings
    from micro_rm.experiment.runner import load_records
    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize
    from micro_rm.train import Stage1Config, fit_stage1
    from micro_rm.train.stage1 import validation_split
    from micro_rm.train.stage2 import AdaptConfig, adapt_router, draw_budget

    warnings.simplefilter("ignore")
    config = ExperimentConfig.from_yaml(f"configs/{name}.yaml")
    phrasings = {a: v for a, v in config.data.contexts.items() if isinstance(v, list)}
    records = select_split(load_records(config.data, config.path), "train")
    keep, held = validation_split([str(r["prompt"]) for r in records], 0.2)
    train, val = [records[i] for i in keep], [records[i] for i in held]
    backbone, cache = load_backbone(config.backbone.name), FeatureCache()

    def features(rows):
        return featurize(rows, backbone, cache, progress=False)[0]

    def accuracy(model, f) -> float:
        probs = model.predict_proba(f.chosen, f.rejected, f.route)
        return pairwise_accuracy(probs, f.attributes)["mean_accuracy"]

    stage1 = features(with_phrasings(train, {a: v[:2] for a, v in phrasings.items()}, "train"))
    validation = [features([{**r, "context": phrasings[r["attribute"]][j]} for r in val]) for j in (2, 3)]
    pool = features(with_phrasings(train, {a: v[2:3] for a, v in phrasings.items()}, "adapt"))
    heads = config.stage1.heads
    print(f"{name}: {len(train)} train / {len(val)} validation pairs (held-out train prompts)")
    print("| T | stage-1 accuracy, unseen phrasings |\n|---:|---:|")
    models = {}
    for t in CANDIDATE_T:
        models[t], _ = fit_stage1(stage1, Stage1Config(heads=heads, epochs=config.stage1.epochs,
                                                       context_temperature=t), progress=False)
        print(f"| {t:g} | {np.mean([accuracy(models[t], f) for f in validation]):.4f} |", flush=True)
    default_t = Stage1Config().context_temperature
    print("\n| context dropout (T default) | stage-1 accuracy, unseen phrasings |\n|---:|---:|")
    for rate in CANDIDATE_DROPOUT:
        dropped, _ = fit_stage1(stage1, Stage1Config(heads=heads, epochs=config.stage1.epochs,
                                                     context_temperature=default_t, context_dropout=rate),
                                progress=False)
        print(f"| {rate:g} | {np.mean([accuracy(dropped, f) for f in validation]):.4f} |", flush=True)
    model = models[default_t]
    validation = validation[1:]                                   # phrasing 4: new to stage 2 too
    base = np.mean([accuracy(model, f) for f in validation])
    print(f"\nstage 2 at the default T (stage 1: {base:.4f})\n| algorithm | B | accuracy (3 draws) |\n"
          "|:---|---:|---:|")
    for algorithm, margin in ALGORITHMS:
        for budget in (10, 50, 200):
            config = AdaptConfig(algorithm=algorithm, keep_margin=margin)
            means = [np.mean([accuracy(adapt_router(model, pool.subset(draw_budget(pool.attributes, budget, s)),
                                                    dataclasses.replace(config, seed=s), progress=False)[0], f)
                              for f in validation]) for s in range(3)]
            name = f"{algorithm} (keep margin {margin:g} SE)" if algorithm == "safe" else algorithm
            print(f"| {name} | {budget} | {np.mean(means):.4f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dsp")
