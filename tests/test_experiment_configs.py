"""The shipped configs parse, and the paper's hub configs run on tiny files in the hub schema."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from micro_rm.experiment.config import ExperimentConfig
from micro_rm.experiment.runner import run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["dsp", "hh", "topicalchat", "pandalm-users", "helpsteer2", "rpr", "demo"])
def test_shipped_config_parses(name):
    config = ExperimentConfig.from_yaml(CONFIGS / f"{name}.yaml")
    assert config.stage1.variants and config.stage2.budget == 50


def test_paper_settings_in_hub_configs():
    helpsteer2 = ExperimentConfig.from_yaml(CONFIGS / "helpsteer2.yaml")
    rpr = ExperimentConfig.from_yaml(CONFIGS / "rpr.yaml")
    assert (helpsteer2.stage1.heads, helpsteer2.stage2.tau) == (5, 1e-3)
    assert (rpr.stage1.heads, rpr.stage2.tau) == (10, 1e-4)
    assert helpsteer2.stage1.variants[0].protocol == "prompt" and rpr.stage1.variants[0].protocol == "context"


def _shrink(config: ExperimentConfig, out_heads: int | None = None) -> ExperimentConfig:
    config.backbone.device = "cpu"
    config.stage1.epochs = 3
    config.stage2.budget, config.stage2.folds = 2, 2
    config.hyre.m = 1
    config.budget_curve.budgets, config.budget_curve.seeds = [1, 2], 2
    return config


def _helpsteer2_rows(n_prompts: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for p in range(n_prompts):
        for r in range(2):
            rows.append({"prompt": f"Question number {p}: how do I do task {p}?",
                         "response": f"Answer {r} to question {p}: " + "detail " * rng.randint(1, 20),
                         **{a: rng.randint(0, 4) for a in
                            ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}})
    return rows


def _rpr_rows(n: int) -> list[dict]:
    categories = ["clarity", "depth", "tone"]
    return [{"prompt": f"Prompt {i}: explain topic {i}.", "response_a": f"Short answer {i}.",
             "response_b": f"A much longer and more detailed answer about topic {i}, with examples.",
             "criteria_x": f"Prefer brevity ({categories[i % 3]}).", "criteria_y": f"Prefer detail ({categories[(i + 1) % 3]}).",
             "category_x": categories[i % 3], "category_y": categories[(i + 1) % 3]} for i in range(n)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_helpsteer2_config_on_a_hub_schema_fixture(tmp_path):
    source = _jsonl(tmp_path / "helpsteer2.jsonl", _helpsteer2_rows(60))
    config = _shrink(ExperimentConfig.from_yaml(CONFIGS / "helpsteer2.yaml"))
    config.data.source = config.eval_data.source = str(source)
    folder = run_experiment(config, backbone="static", out=tmp_path / "report", cache=tmp_path / "cache",
                            progress=False)
    results = json.loads((folder / "results.json").read_text())
    assert results["dataset"]["attributes"] == ["coherence", "complexity", "correctness", "helpfulness", "verbosity"]
    assert results["paper"]["micro"] == 0.783 and "helpsteer2 → helpsteer2-unfiltered" in results["dataset"]["name"]
    assert len(results["head_attribute"]["accuracy"]) == 5


def test_rpr_config_on_a_hub_schema_fixture(tmp_path):
    source = _jsonl(tmp_path / "rpr.jsonl", _rpr_rows(90))
    config = _shrink(ExperimentConfig.from_yaml(CONFIGS / "rpr.yaml"))
    config.data.source = str(source)
    folder = run_experiment(config, backbone="static", out=tmp_path / "report", cache=tmp_path / "cache",
                            progress=False)
    results = json.loads((folder / "results.json").read_text())
    assert results["dataset"]["attributes"] == ["clarity", "depth", "tone"]
    assert len(results["head_attribute"]["accuracy"]) == 10
    assert set(results["methods"]) >= {"micro", "single", "static", "shared-base", "hyre", "micro-hyre", "oracle"}
