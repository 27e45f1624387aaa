"""Choose the router's defaults on validation data only: held-out *train* prompts and phrasings.

The canonical train split is cut again by prompt (20 % held out, salted hash). Stage 1 trains on
the rest with each attribute's first two phrasings (configs/<name>.yaml, `data.contexts`, as the
harness does) and is scored on the held-out prompts under phrasings 3–4, which it never saw.
Each setting is trained with every seed of `SEEDS` (default 0,1,2), printed as mean ± sd over
seeds: the context encodings (`ENCODINGS`, default clauses,separate), the temperatures T and the
context-dropout rates.

Stage 2 takes the harness's shape on phrasings 1–4, in 4 rotations: accuracy is scored under one
of them, stage 1 trains with the next, and the budget's B pairs per attribute (training prompts)
carry the other two, so the scored phrasing is new to both stages. Rows: stage 2's default
(`micro_rm.train.adapt.adapt`) and the paper's Algorithm 1 at τ = 1e-3
(`micro_rm.train.algorithm1`), at B = 10 and 50 (`DRAWS` budget draws each, default 20), as the
change against stage 1 in points, mean ± standard error over the draws (5 draws proved too few to
tell the variants apart). The settings of stage 2 this script once compared were removed
(docs/personalization.md, "Removed settings").

The test phrasings 5–8 and the test split are never read. `CANDIDATE_T=0.1 CANDIDATE_DROPOUT=0.1
SEEDS=0 STAGE1=0 PAPER=0 DRAWS=5` restrict the work
(STAGE1=0 skips the stage-1 grids, PAPER=0 the paper's algorithm).

    python benchmarks/validate_defaults.py dsp        # needs ../shared/data (or $MICRO_RM_DATA)
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

CANDIDATE_T = tuple(float(t) for t in os.environ.get("CANDIDATE_T", "0.02,0.05,0.1,0.2").split(","))
CANDIDATE_DROPOUT = tuple(float(r) for r in os.environ.get("CANDIDATE_DROPOUT", "0,0.1,0.3").split(","))
ENCODINGS = tuple(os.environ.get("ENCODINGS", "clauses,separate").split(","))
SEEDS = tuple(int(s) for s in os.environ.get("SEEDS", "0,1,2").split(","))
DRAWS = os.environ.get("DRAWS", "20")
if not DRAWS.isdigit() or int(DRAWS) < 2:
    print(f"DRAWS must be an integer of at least 2 (a standard error needs two draws), got {DRAWS!r}",
          file=sys.stderr)
    sys.exit(2)
DRAWS = int(DRAWS)
STAGE2 = ("default", "paper") if os.environ.get("PAPER", "1") != "0" else ("default",)

# Validation-only wordings (never in configs/, never tested): with them, stage 2 is validated in
# the harness's exact shape (stage 1 on phrasings 1–2, the budget on 3–4) on wordings new to both.
VALIDATION_PHRASINGS = {
    "dsp": {
        "academy": ["Explain it as you would in a journal article.",
                    "I teach at a university; precision and references matter to me.",
                    "Formal, evidence-based and analytical, like a research report."],
        "business": ["Bottom line first, then the action items.",
                     "I'm a startup founder; tell me what pays off and what it costs.",
                     "Treat me like a CEO who needs a practical recommendation."],
        "entertainment": ["Spice it up with jokes and wild examples!",
                          "I'm reading this for fun, so keep me amused.",
                          "Write it like an upbeat YouTube host, full of energy."],
        "literature": ["Paint it in words, as a poet might.",
                       "I read novels all day; give me graceful, imaginative prose.",
                       "Lyrical and descriptive, with a storyteller's touch."],
    },
    "hh": {
        "helpful": ["Give me a full, practical answer that really solves my problem.",
                    "I need specifics, not vague hints.",
                    "Help me as much as you possibly can."],
        "harmless": ["Stay ethical and never assist with anything risky or illegal.",
                     "I'd rather you say no than say something harmful.",
                     "Keep every answer safe for everyone."],
    },
    "demo": {
        "concise": ["Two sentences max, casual tone.",
                    "I'm in a hurry, so short and relaxed please.",
                    "No bullet points, no padding, just the gist."],
        "expert": ["I'm a specialist; go deep, formal and structured.",
                   "Give me a thorough technical write-up with bullets.",
                   "Detailed engineering-level explanation, please."],
        "cautious": ["Warn me about the dangers first.",
                     "I'm nervous about doing this wrong; flag every risk.",
                     "Be careful and formal, and include safety warnings."],
        "playful": ["Crack a joke or two while you explain.",
                    "Keep it goofy and cheerful!",
                    "I want a lighthearted, funny take on this."],
    },
}


def main(name: str) -> None:
    from micro_rm.data.split import select_split
    from micro_rm.eval import pairwise_accuracy
    from micro_rm.experiment.config import ExperimentConfig
    from micro_rm.experiment.phrasings import with_phrasings
    from micro_rm.experiment.data import load_records
    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize
    from micro_rm.train import Stage1Config, fit_stage1
    from micro_rm.train.stage1 import validation_split
    from micro_rm.train.adapt import adapt, draw_budget
    from micro_rm.train.algorithm1 import algorithm1
    from micro_rm.train.config import AdaptConfig

    warnings.simplefilter("ignore")
    config = ExperimentConfig.from_yaml(f"configs/{name}.yaml")
    phrasings = {a: v for a, v in config.data.contexts.items() if isinstance(v, list)}
    records = select_split(load_records(config.data, config.path), "train")
    keep, held = validation_split([str(r["prompt"]) for r in records], 0.2)
    train, val = [records[i] for i in keep], [records[i] for i in held]
    backbone, cache = load_backbone(config.backbone.name), FeatureCache()

    def features(rows, encoding: str = "clauses"):
        return featurize(rows, backbone, cache, context_encoding=encoding, progress=False)[0]

    def accuracy(model, f) -> float:
        probs = model.predict_proba(f.chosen, f.rejected, f.route)
        return pairwise_accuracy(probs, f.attributes)["mean_accuracy"]

    def stage2(row: str, model, pool, budget: int, seed: int):
        budget_features = pool.subset(draw_budget(pool.attributes, budget, seed))
        if row == "paper":
            return algorithm1(model, budget_features, tau=1e-3, seed=seed)[0]
        return adapt(model, budget_features, AdaptConfig(budget=budget, seed=seed))[0]

    def phrased(encoding: str = "clauses"):
        """Stage-1 features (phrasings 1–2) and validation features under phrasings 3 and 4."""
        return (features(with_phrasings(train, {a: v[:2] for a, v in phrasings.items()}, "train"), encoding),
                [features([{**r, "context": phrasings[r["attribute"]][j]} for r in val], encoding) for j in (2, 3)])

    default_data = phrased()
    heads, epochs = config.stage1.heads, config.stage1.epochs
    print(f"{name}: {len(train)} train / {len(val)} validation pairs (held-out train prompts)")

    def grid(title: str, values, settings, data=lambda value: default_data) -> None:
        print(f"| {title} | stage-1 accuracy, unseen phrasings (seeds {SEEDS}) |\n|---:|---:|")
        for value in values:
            train_features, validation_features = data(value)
            scores = [np.mean([accuracy(fit_stage1(train_features, Stage1Config(heads=heads, epochs=epochs, seed=seed,
                                                                                  **settings(value)),
                                                   progress=False)[0], f) for f in validation_features])
                      for seed in SEEDS]
            print(f"| {value:g} | {np.mean(scores):.4f} ± {np.std(scores):.4f} |" if isinstance(value, float)
                  else f"| {value} | {np.mean(scores):.4f} ± {np.std(scores):.4f} |", flush=True)

    if os.environ.get("STAGE1", "1") != "0":
        grid("context encoding", ENCODINGS, lambda encoding: {}, phrased)
        grid("T", CANDIDATE_T, lambda t: {"context_temperature": t})
        grid("context dropout (T default)", CANDIDATE_DROPOUT, lambda rate: {"context_dropout": rate})
    print(f"\nstage 2: change against stage 1 in points, mean ± s.e. over {DRAWS} budget draws per rotation")
    print("| algorithm | B | " + " | ".join(f"rotation {r + 1}" for r in range(4)) + " | mean |\n|:---|---:|"
          + "---:|" * 5)
    changes: dict = {}
    for r in range(4):                            # score phrasing r, stage 1 on r + 1, budget r + 2, r + 3
        stage1_phrasing, budget_phrasings = (r + 1) % 4, [(r + 2) % 4, (r + 3) % 4]
        one = features(with_phrasings(train, {a: [v[stage1_phrasing]] for a, v in phrasings.items()}, "train"))
        model, _ = fit_stage1(one, Stage1Config(heads=heads, epochs=epochs), progress=False)
        pool = features(with_phrasings(train, {a: [v[j] for j in budget_phrasings] for a, v in phrasings.items()},
                                       "adapt"))
        scored = features([{**x, "context": phrasings[x["attribute"]][r]} for x in val])
        base = accuracy(model, scored)
        for row in STAGE2:
            for budget in (10, 50):
                changes.setdefault((row, budget), []).append(100 * np.array([
                    accuracy(stage2(row, model, pool, budget, s), scored) - base for s in range(DRAWS)]))
    for (row, budget), values in changes.items():
        print(f"| {row} | {budget} | " + " | ".join(_mean_se(v) for v in values)
              + f" | {np.mean([v.mean() for v in values]):+.2f} |")
    if name not in VALIDATION_PHRASINGS:
        return
    print("\nstage 2 in the harness's shape (stage 1 on phrasings 1–2, budget on 3–4), scored under 3 "
          f"validation-only wordings: change against stage 1 in points, mean ± s.e. over {DRAWS} budget draws")
    print("| algorithm | B | " + " | ".join(f"wording {j + 1}" for j in range(3)) + " | mean |\n|:---|---:|"
          + "---:|" * 4)
    model, _ = fit_stage1(default_data[0], Stage1Config(heads=heads, epochs=epochs), progress=False)
    pool = features(with_phrasings(train, {a: v[2:4] for a, v in phrasings.items()}, "adapt"))
    scored = [features([{**x, "context": VALIDATION_PHRASINGS[name][x["attribute"]][j]} for x in val])
              for j in range(3)]
    base = [accuracy(model, f) for f in scored]
    for row in STAGE2:
        for budget in (10, 50):
            adapted = [stage2(row, model, pool, budget, s) for s in range(DRAWS)]
            values = [100 * (np.array([accuracy(m, f) for m in adapted]) - b) for f, b in zip(scored, base)]
            print(f"| {row} | {budget} | " + " | ".join(_mean_se(v) for v in values)
                  + f" | {np.mean([v.mean() for v in values]):+.2f} |", flush=True)


def _mean_se(values: np.ndarray) -> str:
    """Mean ± standard error of per-draw changes."""
    return f"{values.mean():+.2f} ± {values.std(ddof=1) / np.sqrt(len(values)):.2f}"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dsp")
