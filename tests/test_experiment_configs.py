"""The shipped configs parse, a bad config is refused at load, and the paper's hub configs run on
tiny files in the hub schema."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import yaml

from micro_rm.cli.app import main
from micro_rm.errors import MicroRMError
from micro_rm.experiment.config import ExperimentConfig
from micro_rm.experiment.runner import run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GOOD = {"data": {"builder": "synthetic", "source": "n_prompts=40,pairs_per_prompt=4"},
        "backbone": {"name": "static"}}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_config_parses(path):
    config = ExperimentConfig.from_yaml(path)
    assert config.stage1.variants and config.stage2.budget == 50


def test_from_yaml_refuses_a_config_nested_too_deep(tmp_path):
    """The depth check lives in the one read of the file, so the library refuses it as the CLI does."""
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 1000)
    with pytest.raises(MicroRMError, match=r"deep.yaml line 1: nested more than 32 levels deep"):
        ExperimentConfig.from_yaml(path)


@pytest.mark.parametrize("section, value, message", [
    # the five of issue 24: each was accepted, or failed after ~45 s of work
    ("stage2", {"folds": 1}, "`stage2.folds` must be an integer in [2, 100], got 1"),
    ("stage2", {"tau": 1e-9}, "`stage2.tau` must be a finite number ≥ 1e-08 or 'auto', got 1e-09"),
    ("stage2", {"tau_grid": [-1]}, "unknown key `stage2.tau_grid`; stage2 accepts: budget, tau, folds"),
    ("stage2", {"lr": -1}, "unknown key `stage2.lr`; stage2 accepts: budget, tau, folds"),
    ("stage1", {"alpha": -1}, r"`stage1.alpha` must be a finite number in [0.0, inf], got -1"),
    # any other value out of range
    ("stage1", {"variants": [{"alpha": -0.5}]}, "`stage1.variants[0].alpha` must be a finite number in [0.0, inf]"),
    ("stage1", {"variants": []}, "`stage1.variants` must be a non-empty list"),
    ("stage1", {"heads": 0}, "`stage1.heads` must be an integer in [1, 64], got 0"),
    ("stage1", {"heads": 100000}, "`stage1.heads` must be an integer in [1, 64], got 100000"),
    ("stage2", {"folds": 1000}, "`stage2.folds` must be an integer in [2, 100], got 1000"),
    ("stage1", {"epochs": 2.5}, "`stage1.epochs` must be an integer in [1, 10,000], got 2.5"),
    ("stage1", {"lr": 0}, "`stage1.lr` must be a finite number in (0.0, inf], got 0"),
    ("stage1", {"val_fraction": 1.0}, "`stage1.val_fraction` must be a finite number in [0.0, 1.0), got 1.0"),
    ("stage1", {"router": "gru"}, "`stage1.router` must be one of mlp, linear, got 'gru'"),
    ("stage1", {"select": "best"}, "`stage1.select` must be one of validation, first, got 'best'"),
    ("stage2", {"budget": 0}, "`stage2.budget` must be an integer in [1, 1,000,000], got 0"),
    ("budget_curve", {"budgets": [5, 0]}, "`budget_curve.budgets[1]` must be an integer ≥ 1, got 0"),
    ("budget_curve", {"seeds": 0}, "`budget_curve.seeds` must be an integer in [1, 1,000], got 0"),
    ("users", {"eta": 0}, "`users.eta` must be a finite number in (0.0, inf], got 0"),
    ("users", {"feedback": 0}, "`users.feedback` must be an integer ≥ 1, got 0"),
    ("user_curve", {"seeds": 0}, "`user_curve.seeds` must be an integer in [1, 1,000], got 0"),
    ("phrasings", {"train": 0}, "`phrasings.train` must be an integer ≥ 1, got 0"),
    ("phrasings", {"adapt": -1}, "`phrasings.adapt` must be an integer ≥ 0, got -1"),
    ("phrasings", {"budgets": [0]}, "`phrasings.budgets[0]` must be an integer ≥ 1, got 0"),
    ("hyre", {"m": 0}, "`hyre.m` must be an integer ≥ 1, got 0"),
    ("backbone", {"batch_size": 0}, "`backbone.batch_size` must be an integer in [1, 65,536], got 0"),
    ("seed", -1, "`seed` must be an integer in [0, 4,294,967,295], got -1"),
    ("oracle", "yes", "`oracle` must be true or false, got 'yes'"),
    ("stage3", {}, "unknown key `stage3`; the top level accepts: data, title"),
])
def test_bad_config_exits_2_with_one_line_before_any_work(tmp_path, capsys, monkeypatch, section, value,
                                                          message):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr("micro_rm.data.builders.build_pairs", no_data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**GOOD, section: value}), encoding="utf-8")
    capsys.readouterr()
    start = time.perf_counter()
    code = main(["experiment", str(path), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: ") and message in err
    assert time.perf_counter() - start < 15
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()   # nothing encoded or written


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
