"""Held-out phrasings and new users' learning curve in the experiment harness (static backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from micro_rm.cli import main
from micro_rm.data.synthetic import GROUPS, PHRASINGS
from micro_rm.experiment.phrasings import split_phrasings, with_phrasings

RUN = {
    "title": "tiny phrasings",
    "data": {"builder": "synthetic", "source": "n_prompts=60,pairs_per_prompt=4,responses_per_prompt=6,beta=3",
             "contexts": PHRASINGS},
    "backbone": {"name": "static"},
    "stage1": {"heads": 4, "epochs": 20, "lr": 0.02, "variants": [{"protocol": "context", "balance": "marginal"}]},
    "stage2": {"budget": 8, "folds": 2},
    "hyre": {"m": 4},
    "budget_curve": {"budgets": [8], "seeds": 2},
    "phrasings": {"train": 2, "adapt": 2, "budgets": [4]},
    "user_curve": {"enabled": True, "seeds": 2},
}


def _write(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_split_and_assign_phrasings_are_disjoint_and_deterministic():
    train, adapt, test = split_phrasings(PHRASINGS, train=2, adapt=2)
    for group in PHRASINGS:
        assert not set(train[group]) & set(test[group]) and not set(adapt[group]) & set(test[group])
        assert train[group][0] == next(g.context for g in GROUPS if g.name == group)
    records = [{"prompt": f"p{i}", "attribute": "concise", "chosen": "a", "rejected": "b"} for i in range(40)]
    first, again = with_phrasings(records, train, "s"), with_phrasings(records, train, "s")
    assert [r["context"] for r in first] == [r["context"] for r in again]
    assert {r["context"] for r in first} == set(train["concise"])          # both phrasings are used


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("phrasings")
    code = main(["experiment", str(_write(root / "run.yaml", RUN)), "--out", str(root / "out"),
                 "--cache", str(root / "cache"), "--json"])
    assert code == 0
    return json.loads((root / "out" / "results.json").read_text()), (root / "out" / "report.md").read_text()


def test_held_out_phrasings_are_reported_zero_shot_and_after_stage2(run):
    results, report = run
    p = results["phrasings"]
    assert p["test"]["playful"] == PHRASINGS["playful"][4:]
    assert 0.5 < p["heldout"] <= 1 and len(p["heldout_per_phrasing"]) == 4
    assert p["ratio"] == pytest.approx(p["heldout"] / p["training_phrasings"])
    assert set(p["stage2"]) == {"4"} and 0.5 < p["stage2"]["4"]["mean"] <= 1
    assert "Held-out phrasings" in report


def test_new_users_learning_curve_has_every_n_and_kind(run):
    results, report = run
    curve = results["user_curve"]
    assert curve["n"] == [0, 1, 2, 5, 10, 20, 50]
    assert set(curve["curves"]) == {f"{k} / {s}" for k in ("no context", "context") for s in ("random", "active")}
    no_context = curve["curves"]["no context / random"]["mean"]
    assert no_context[-1] > no_context[0] + 0.1           # feedback teaches a user without context
    assert "New users" in report


@pytest.mark.parametrize("contexts, message", [
    ({"concise": []}, "data.contexts.concise"),
    ({"concise": ["a", ""]}, "data.contexts.concise"),
    ({"concise": ["only", "three", "here"]}, "at least 5 phrasings"),
    ({"nobody": ["a", "b", "c", "d", "e"]}, "names attribute(s) nobody"),
])
def test_bad_phrasings_are_one_line_exit_2(tmp_path, capsys, contexts, message):
    config = {**RUN, "data": {**RUN["data"], "contexts": contexts}}
    code = main(["experiment", str(_write(tmp_path / "bad.yaml", config)), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
