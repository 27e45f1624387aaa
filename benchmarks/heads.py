"""Reproduce results/heads-*: head profiles and labels on DSP, the HH harmless audit and masking,
merging a duplicated head, and ``--heads auto`` on DSP (default backbone, CPU, a few minutes
with a warm feature cache).

    python benchmarks/heads.py [--work /tmp/heads-work]

Nothing is chosen on test labels: the labels are generated from the train pairs (what the heads
were fitted to reward), the audit that picks heads to mask runs on the stage-1 validation pairs
(held-out train prompts), and the test split only measures.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, data_dir

from micro_rm.cli import main
from micro_rm.data.readers import read_pairs, write_pairs
from micro_rm.data.records import prompt_key
from micro_rm.eval.bootstrap import PromptBootstrap, percentile_interval
from micro_rm.heads.mask import mask_heads
from micro_rm.heads.merge import duplicate_head
from micro_rm.model.mixture import MixtureRewardModel
from micro_rm.model.text import featurize_for
from micro_rm.train.stage1 import validation_split

RESULTS = REPO / "results"
TRAIN = ["--backbone", "default", "--epochs", "30"]


def cli(*argv: Any) -> None:
    print("$ micro-rm", " ".join(map(str, argv)), flush=True)
    if main([str(a) for a in argv]) != 0:
        raise SystemExit(f"micro-rm {argv[0]} failed")


def split_files(work: Path, name: str, source: str) -> None:
    """``name``-train/-test pair files, and -val: the stage-1 validation prompts of train."""
    for split in ("train", "test"):
        if not (work / f"{name}-{split}.jsonl").exists():
            cli("data", "build", name, "--source", data_dir() / source, "--out", work / f"{name}-{split}.jsonl",
                "--split", split)
    train = read_pairs(str(work / f"{name}-train.jsonl"))
    _, held = validation_split([prompt_key(r) for r in train], 0.1)
    write_pairs([train[i] for i in held], work / f"{name}-val.jsonl")


def accuracy_with_intervals(models: dict[str, MixtureRewardModel], records: list[dict]) -> dict[str, Any]:
    """Routed accuracy (mean over attributes) of each model with 95% prompt-bootstrap intervals,
    and each model's paired difference to the first."""
    features = {name: featurize_for(m, records, progress=False) for name, m in models.items()}
    first = next(iter(models))
    attributes = features[first].attributes
    boot = PromptBootstrap([prompt_key(r) for r in records], attributes)
    out, samples = {}, {}
    for name, model in models.items():
        f = features[name]
        correct = (model.predict_proba(f.chosen, f.rejected, f.route) > 0.5).astype(float)
        samples[name] = boot.samples(correct)
        per = samples[name]["per_attribute"]
        out[name] = {"mean": round(float(np.mean([correct[np.asarray(attributes) == a].mean()
                                                   for a in boot.attributes])), 4),
                     "ci95": percentile_interval(samples[name]["mean"]),
                     "per_attribute": {str(a): percentile_interval(per[:, j]) for j, a in enumerate(boot.attributes)}}
        if name != first:
            out[name]["minus_" + first + "_ci95"] = percentile_interval(samples[name]["mean"] - samples[first]["mean"])
    return out


def dsp(work: Path) -> None:
    split_files(work, "dsp", "dsp-domain-specific-preference")
    model_dir = work / "dsp-k4"
    if not model_dir.exists():
        cli("train", "--data", work / "dsp-train.jsonl", *TRAIN, "--heads", 4, "--out", model_dir)
    cli("heads", model_dir, "--data", work / "dsp-train.jsonl", "--report", RESULTS / "heads-dsp", "--relabel")
    cli("heads", model_dir, "--data", work / "dsp-test.jsonl", "--report", RESULTS / "heads-dsp" / "test")
    write_json(RESULTS / "heads-dsp" / "acceptance.json", style_check(RESULTS / "heads-dsp" / "test" / "heads.json"))
    # merging: a fifth head that repeats the most used one, then `heads merge` on the train pairs
    model = MixtureRewardModel.from_pretrained(str(model_dir))
    usage = json.loads((RESULTS / "heads-dsp" / "heads.json").read_text())["usage"]
    doubled = duplicate_head(model, int(np.argmax(usage)))
    doubled.save_pretrained(work / "dsp-k5-duplicate")
    cli("heads", "merge", work / "dsp-k5-duplicate", "--data", work / "dsp-train.jsonl", "--min-agreement", 0.9,
        "--out", work / "dsp-merged")
    merged = MixtureRewardModel.from_pretrained(str(work / "dsp-merged"))
    result = {"duplicated_head": int(np.argmax(usage)), "clusters": merged.config.training["merge"]["clusters"],
              "num_heads": {"original": 4, "duplicated": 5, "merged": merged.config.num_heads},
              "test_accuracy": accuracy_with_intervals({"original": model, "duplicated": doubled, "merged": merged},
                                                       read_pairs(str(work / "dsp-test.jsonl")))}
    write_json(RESULTS / "heads-merge" / "results.json", result)


def style_check(profile_path: Path) -> dict[str, Any]:
    """Which head correlates most with each statistic group, next to the head the test
    head × attribute matrix names for each domain."""
    profile = json.loads(profile_path.read_text())
    stats = profile["statistics"]
    rho = np.array(stats["spearman"])                                           # [K, S]
    groups = {"literary": ["imagery", "figurative", "lexical_diversity"],
              "brevity/action": ["action", "numbers", "list_items"], "brevity (fewer words)": ["words"]}
    index = {name: i for i, name in enumerate(stats["names"])}
    top = {g: {name: int(np.argmax(rho[:, index[name]] * (-1 if g.startswith("brevity (") else 1)))
               for name in names} for g, names in groups.items()}
    return {"best_head_per_attribute": profile["accuracy"]["best_head"], "top_head_per_statistic": top,
            "labels": profile["stored_labels"]}


def hh(work: Path) -> None:
    """K = 4 (the DSP setting) and K = 2, audited on harmless validation pairs; masking measured on test."""
    split_files(work, "hh-rlhf", "hh-rlhf")
    for split in ("val", "test"):
        rows = [r for r in read_pairs(str(work / f"hh-rlhf-{split}.jsonl")) if r.get("attribute") == "harmless"]
        write_pairs(rows, work / f"harmless-{split}.jsonl")
    test = read_pairs(str(work / "hh-rlhf-test.jsonl"))
    for k in (4, 2):
        model_dir, folder = work / f"hh-k{k}", RESULTS / "heads-hh" / f"k{k}"
        if not model_dir.exists():
            cli("train", "--data", work / "hh-rlhf-train.jsonl", *TRAIN, "--heads", k, "--out", model_dir)
        cli("heads", "audit", model_dir, "--data", work / "harmless-val.jsonl", "--out", folder / "audit-validation.json")
        cli("heads", "audit", model_dir, "--data", work / "harmless-test.jsonl", "--out", folder / "audit-test.json")
        audit = json.loads((folder / "audit-validation.json").read_text())
        # Mask the flagged heads; when none is flagged, the head most often preferring the rejected
        # response on validation, as an exploratory check (it is not significant).
        heads = audit["flagged"] or [max(audit["heads"], key=lambda h: h["rejected_rate"])["head"]]
        model = MixtureRewardModel.from_pretrained(str(model_dir))
        masked = mask_heads(MixtureRewardModel.from_pretrained(str(model_dir)), heads)
        result = {"masked_heads": heads, "flagged_on_validation": audit["flagged"],
                  "test_accuracy": {a: accuracy_with_intervals({"original": model, "masked": masked},
                                                                [r for r in test if r["attribute"] == a])
                                    for a in ("harmless", "helpful")}}
        write_json(folder / "masking.json", result)


def auto(work: Path) -> None:
    out = work / "dsp-auto"
    cli("train", "--data", work / "dsp-train.jsonl", *TRAIN, "--heads", "auto", "--max-heads", 8, "--out", out)
    folder = RESULTS / "heads-auto"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "heads_auto.png", folder / "dsp_heads_auto.png")
    write_json(folder / "dsp.json", json.loads((out / "config.json").read_text())["metrics"]["heads_auto"])


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
    print(json.dumps(value, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/micro-rm-heads"))
    parser.add_argument("--only", choices=("dsp", "hh", "auto"), action="append")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for step in args.only or ("dsp", "hh", "auto"):
        {"dsp": dsp, "hh": hh, "auto": auto}[step](args.work)
