"""The experiment runner end to end on tiny synthetic data (static backbone), and its config errors."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from micro_rm.cli.app import main
from micro_rm.errors import MicroRMError
from micro_rm.experiment.config import ExperimentConfig, resolve_source

TINY = {
    "title": "tiny synthetic",
    "data": {"builder": "synthetic", "source": "n_prompts=40,pairs_per_prompt=4,responses_per_prompt=6,beta=3"},
    "backbone": {"name": "static"},
    "stage1": {"heads": 4, "epochs": 40, "lr": 0.02,
               "variants": [{"protocol": "context", "balance": "marginal"},
                            {"protocol": "prompt", "balance": "example"}]},
    "stage2": {"budget": 8, "tau": "auto", "folds": 2},
    "hyre": {"m": 4},
    "budget_curve": {"budgets": [4, 8, 10000], "seeds": 2},
}
METHODS = ("single", "static", "shared-base", "single-ctx", "static-ctx", "hyre", "micro-hyre", "micro-stage1",
           "micro", "oracle")


def _write(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run shared by the checks below (it takes ~20 s)."""
    root = tmp_path_factory.mktemp("experiment")
    config = _write(root / "tiny.yaml", TINY)
    out = root / "report"
    with pytest.warns(UserWarning, match="budget curve: B = 10000 skipped"):
        code = main(["experiment", str(config), "--out", str(out), "--cache", str(root / "cache"), "--json"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_report_files_exist(tiny_run):
    out, results = tiny_run
    for name in ("report.md", "results.json", "head_attribute.png", "router_weights.png", "budget_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "model" / "config.json").is_file() and (out / "model-stage1" / "config.json").is_file()
    assert list(results["methods"]) == list(METHODS)
    assert results["budget_curve"]["budgets"] == [4, 8]
    assert len(results["variants"]) == 2 and sum(v["selected"] for v in results["variants"]) == 1
    assert results["command"].startswith("micro-rm experiment") and results["seconds"] > 0


def test_report_numbers_equal_results_json(tiny_run):
    out, results = tiny_run
    report = (out / "report.md").read_text()
    attributes = results["dataset"]["attributes"]
    rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
            for line in report.split("## Pairwise accuracy per attribute")[1].split("\n\n")[1].splitlines()[2:]}
    for name, row in results["methods"].items():
        expected = [f"{row['per_attribute'][a]:.3f}" for a in attributes] + [f"{row['mean']:.3f}"]
        assert rows[name][:len(expected)] == expected, name
    calibration = report.split("## Calibration")[1]
    for name, row in results["methods"].items():
        if "nll" in row:
            assert re.search(rf"\| {re.escape(name)} \| {row['nll']:.3f} \| {row['ece']:.3f} \|", calibration), name
    for budget, mean, std in zip(*(results["budget_curve"][k] for k in ("budgets", "mean", "std"))):
        assert f"| {budget} | {mean:.3f} ± {std:.3f} |" in report


def test_fair_rows_intervals_differences_and_timing(tiny_run):
    out, results = tiny_run
    methods = results["methods"]
    # synthetic data has one context sentence per group: the router is told the group
    assert "≡ attribute labels" in methods["single-ctx"]["supervision"]
    assert "≡ attribute labels" in methods["micro-stage1"]["supervision"]
    for name, row in methods.items():
        lo, hi = row["ci95"]
        assert lo <= row["mean"] <= hi and hi - lo > 0, name
        assert set(row["per_attribute_ci95"]) == set(row["per_attribute"]), name
    differences = {(d["method"], d["against"]): d for d in results["differences"]}
    assert set(differences) == {("micro-stage1", "single-ctx"), ("micro", "single-ctx"), ("micro", "micro-stage1")}
    gap = differences[("micro-stage1", "single-ctx")]
    assert gap["difference"] == pytest.approx(methods["micro-stage1"]["mean"] - methods["single-ctx"]["mean"])
    assert gap["excludes_zero"] and gap["ci95"][0] > 0                  # the groups really disagree
    assert list(results["timing"]) == ["encode", "stage 1", "stage 2", "curves", "other"]
    report = (out / "report.md").read_text()
    assert "## Paired differences" in report and "Time: encode" in report
    assert results["budget_curve"]["std_ddof"] == 1
    assert results["settings"]["stage2"] == "adapt (candidates chosen by 2-fold cross-validation)"
    assert "stage2 = adapt (candidates chosen by 2-fold cross-validation)" in report


def test_micro_beats_single_on_mixed_groups(tiny_run):
    """The groups disagree, so one BT head is stuck near chance while routed heads are not."""
    _, results = tiny_run
    methods = results["methods"]
    assert methods["micro-stage1"]["mean"] > methods["single"]["mean"] + 0.1
    assert methods["oracle"]["mean"] > methods["single"]["mean"]


def test_per_attribute_accuracy_equals_a_hand_count(tiny_run):
    """micro-stage1's per-attribute accuracy, recounted pair by pair with the saved model."""
    from micro_rm.data.builders import build_pairs
    from micro_rm.data.split import select_split
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.text import featurize_for

    out, results = tiny_run
    test = select_split(build_pairs("synthetic", TINY["data"]["source"]), "test")
    model = MixtureRewardModel.from_pretrained(str(out / "model-stage1"))
    features = featurize_for(model, test, out.parent / "cache", progress=False)
    probs = model.predict_proba(features.chosen, features.rejected, features.route)
    right, seen = defaultdict(int), defaultdict(int)
    for record, p in zip(test, probs):
        seen[record["attribute"]] += 1
        right[record["attribute"]] += int(p > 0.5)
    hand = {a: right[a] / seen[a] for a in seen}
    assert hand == pytest.approx(results["methods"]["micro-stage1"]["per_attribute"], abs=1e-12)


def test_eval_command_agrees_with_the_experiment(tiny_run, tmp_path, capsys):
    """`micro-rm eval --report` on the saved stage-1 model and the test split gives the same numbers."""
    from micro_rm.data.builders import build_pairs
    from micro_rm.data.readers import write_pairs
    from micro_rm.data.split import select_split

    out, results = tiny_run
    data = tmp_path / "test.jsonl"
    write_pairs(select_split(build_pairs("synthetic", TINY["data"]["source"]), "test"), data)
    capsys.readouterr()
    code = main(["eval", "--model", str(out / "model-stage1"), "--data", str(data), "--cache",
                 str(out.parent / "cache"), "--report", str(tmp_path / "eval"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= {"mean_accuracy", "per_attribute", "pairs", "nll", "ece", "router", "report"}
    assert result["per_attribute"] == pytest.approx(results["methods"]["micro-stage1"]["per_attribute"])
    assert result["nll"] == pytest.approx(results["methods"]["micro-stage1"]["nll"], rel=1e-5)
    assert len(result["router"]["head_usage"]) == 4
    assert (tmp_path / "eval" / "report.md").is_file()


# ---------------------------------------------------------------------- config errors


def _run_cli(tmp_path, config: dict, capsys) -> tuple[int, str]:
    path = _write(tmp_path / "bad.yaml", config)
    capsys.readouterr()
    code = main(["experiment", str(path), "--out", str(tmp_path / "out")])
    return code, capsys.readouterr().err.strip()


def test_unknown_key_names_its_path(tmp_path, capsys):
    config = {**TINY, "stage2": {**TINY["stage2"], "fodls": 3}}
    code, err = _run_cli(tmp_path, config, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown key `stage2.fodls`; stage2 accepts: budget, tau, folds" in err


def test_unknown_key_in_a_variant(tmp_path, capsys):
    config = {**TINY, "stage1": {**TINY["stage1"], "variants": [{"protocol": "context", "balanse": "x"}]}}
    code, err = _run_cli(tmp_path, config, capsys)
    assert code == 2 and "unknown key `stage1.variants[0].balanse`" in err


def test_bad_value_is_one_line(tmp_path, capsys):
    config = {**TINY, "stage1": {**TINY["stage1"], "variants": [{"protocol": "contxt"}]}}
    code, err = _run_cli(tmp_path, config, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "stage1.variants[0].protocol" in err


def test_missing_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MICRO_RM_DATA", str(tmp_path / "nowhere"))
    config = {**TINY, "data": {"builder": "dsp", "source": "{data}/dsp-domain-specific-preference"}}
    code, err = _run_cli(tmp_path, config, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "does not exist" in err and "MICRO_RM_DATA" in err


def test_missing_pair_file(tmp_path, capsys):
    config = {**TINY, "data": {"builder": "jsonl", "source": str(tmp_path / "missing.jsonl")}}
    code, err = _run_cli(tmp_path, config, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "missing.jsonl" in err


def test_missing_config_file(tmp_path, capsys):
    code = main(["experiment", str(tmp_path / "nope.yaml")])
    assert code == 2 and "config file not found" in capsys.readouterr().err


def test_budget_larger_than_data_uses_every_pair_like_adapt(tmp_path):
    """One rule for `micro-rm adapt` and the experiment: a group smaller than the budget is used
    whole, with a warning (and, here, a note in the report)."""
    from micro_rm.experiment.data import load_data
    from micro_rm.experiment.state import Run

    config = ExperimentConfig.from_dict({**TINY, "stage2": {**TINY["stage2"], "budget": 100000}})
    run = Run(config, out=tmp_path / "out", cache=tmp_path / "cache", progress=False)
    with pytest.warns(UserWarning, match="stage2.budget = 100000 pairs per attribute is more than"):
        load_data(run)
    assert any("all of their train pairs are used" in note for note in run.notes)


def test_unknown_builder(tmp_path, capsys):
    code, err = _run_cli(tmp_path, {**TINY, "data": {"builder": "dpss"}}, capsys)
    assert code == 2 and "unknown builder 'dpss'" in err


def test_generic_pair_file_source(tmp_path):
    """A config's data can be any pair file in the record schema (builder jsonl)."""
    from micro_rm.data.builders import build_pairs
    from micro_rm.data.readers import write_pairs
    from micro_rm.experiment.data import load_records

    write_pairs(build_pairs("synthetic", "n_prompts=3,pairs_per_prompt=1"), tmp_path / "pairs.jsonl")
    config = ExperimentConfig.from_dict({"data": {"builder": "jsonl", "source": "pairs.jsonl"}})
    config.path = str(tmp_path / "exp.yaml")               # relative sources are read beside the config
    records = load_records(config.data, config.path)
    assert len(records) == 12 and records[0]["context"]


def test_contexts_fill_pairs_without_one():
    from micro_rm.experiment.data import load_records

    data = ExperimentConfig.from_dict({"data": {"builder": "synthetic", "source": "n_prompts=2,pairs_per_prompt=1",
                                                "contexts": {"concise": "ignored: pairs keep theirs"}}}).data
    assert all(r["context"] != "ignored: pairs keep theirs" for r in load_records(data, None))
    with pytest.raises(MicroRMError, match="no pair of synthetic has"):
        load_records(ExperimentConfig.from_dict({"data": {"builder": "synthetic", "source": "n_prompts=2",
                                                          "contexts": {"helpful": "x"}}}).data, None)


def test_data_placeholder_uses_micro_rm_data(tmp_path, monkeypatch):
    (tmp_path / "dsp").mkdir()
    monkeypatch.setenv("MICRO_RM_DATA", str(tmp_path))
    assert resolve_source("{data}/dsp", None) == str((tmp_path / "dsp").resolve())
    assert resolve_source("nvidia/HelpSteer2", None) == "nvidia/HelpSteer2"


def test_tau_and_numbers_parse_like_yaml_writes_them():
    config = ExperimentConfig.from_dict({"data": {"builder": "synthetic"}, "stage2": {"tau": "1e-3"}})
    assert config.stage2.tau == 0.001
    with pytest.raises(MicroRMError, match="`stage2.tau` must be"):
        ExperimentConfig.from_dict({"data": {"builder": "synthetic"}, "stage2": {"tau": "often"}})
    for key in ("algorithm", "heldout", "update", "wordings", "tau_grid", "lr", "epochs", "batch_size"):
        with pytest.raises(MicroRMError, match=f"unknown key `stage2.{key}`; stage2 accepts: budget, tau, folds"):
            ExperimentConfig.from_dict({"data": {"builder": "synthetic"}, "stage2": {key: 1}})
    with pytest.raises(MicroRMError, match="missing key `data`"):
        ExperimentConfig.from_dict({})


def test_per_user_online_hedge(tmp_path):
    """Users (user_id) get a Hedge state each; the report shows accuracy before / after feedback."""
    from micro_rm.data.builders import build_pairs
    from micro_rm.data.readers import write_pairs
    from micro_rm.experiment.runner import run_experiment

    records = build_pairs("synthetic", TINY["data"]["source"])
    for record in records:
        record["user_id"] = record["attribute"]
        del record["context"]                                   # anonymous users: no context
    write_pairs(records, tmp_path / "users.jsonl")
    config = ExperimentConfig.from_dict({
        **TINY, "data": {"builder": "jsonl", "source": str(tmp_path / "users.jsonl")},
        "stage1": {**TINY["stage1"], "variants": [{"protocol": "prompt", "balance": "marginal"}]},
        "budget_curve": {"budgets": [4], "seeds": 1}, "users": {"enabled": True, "feedback": 16}})
    folder = run_experiment(config, out=tmp_path / "report", cache=tmp_path / "cache", progress=False)
    results = json.loads((folder / "results.json").read_text())
    users = results["users"]["per_user"]
    assert sorted(users) == ["cautious", "concise", "expert", "playful"]
    assert all(u["feedback_pairs"] == 16 and 0 <= u["after"] <= 1 for u in users.values())
    # Feedback moved each user's weights away from uniform (whether that helps depends on the heads).
    assert all(max(u["head_weights"]) > 0.25 + 1e-6 and sum(u["head_weights"]) == pytest.approx(1.0, abs=1e-3)
               for u in users.values())
    report = (folder / "report.md").read_text()
    for name, u in users.items():
        assert f"| {name} | {u['test_pairs']} | 16 | {u['before']:.3f} | {u['after']:.3f} |" in report


def test_test_pairs_without_attribute_are_left_out_of_every_method(tmp_path):
    """The bug: they formed a "(none)" group in some means and not in the oracle's."""
    from micro_rm.data.builders import build_pairs
    from micro_rm.data.readers import write_pairs
    from micro_rm.experiment.data import load_data
    from micro_rm.experiment.state import Run

    records = build_pairs("synthetic", "n_prompts=40,pairs_per_prompt=4")
    for record in records[::5]:
        record.pop("attribute")
    write_pairs(records, tmp_path / "pairs.jsonl")
    config = ExperimentConfig.from_dict({"data": {"builder": "jsonl", "source": "pairs.jsonl"},
                                         "stage2": {"budget": 2}, "hyre": {"m": 2}, "budget_curve": {"budgets": [2]}})
    config.path = str(tmp_path / "exp.yaml")
    run = Run(config, out=tmp_path / "out", progress=False)
    load_data(run)
    assert run.test and all(r.get("attribute") for r in run.test)
    assert any("test pairs without an `attribute` are left out" in note for note in run.notes)
