"""``micro-rm heads`` (profile, label, audit, mask, merge) and ``train --heads auto``, end to end
with the fake word backbone of test_train_cli."""

from __future__ import annotations

import json

import pytest

from test_train_cli import _run, _train, fake_backbone, files  # noqa: F401  (fixtures)


@pytest.fixture
def model(files, capsys):   # noqa: F811
    assert _train(files, capsys)[0] == 0
    return files / "model"


def test_heads_profile_writes_the_report_and_stores_labels(files, model, capsys):
    code, result = _run(capsys, "heads", model, "--data", files / "test.jsonl", "--report", files / "r", "--json")
    assert code == 0
    assert {p.name for p in (files / "r").iterdir()} >= {"heads.json", "report.md", "head_attribute.png",
                                                         "head_statistics.png", "head_agreement.png"}
    profile = json.loads((files / "r" / "heads.json").read_text())
    assert len(profile["labels"]) == 2 and profile["accuracy"]["attributes"] == ["brief", "detailed"]
    # the brief head rewards short answers, the detailed head long ones
    words = profile["statistics"]["names"].index("words")
    brief = profile["accuracy"]["best_head"]["brief"]
    assert profile["statistics"]["spearman"][brief][words] < 0 < profile["statistics"]["spearman"][1 - brief][words]
    assert json.loads((model / "config.json").read_text())["head_labels"] == result["labels"]
    assert "## Contrastive examples" in (files / "r" / "report.md").read_text()


def test_heads_label_edits_one_label_and_profile_keeps_it(files, model, capsys):
    assert _run(capsys, "heads", "label", model, "--head", 1, "--text", "my own words")[0] == 0
    code, result = _run(capsys, "heads", "profile", model, "--data", files / "test.jsonl",
                        "--report", files / "r", "--json")
    assert code == 0 and result["stored_labels"][1] == "my own words"
    code, out = _run(capsys, "heads", "label", model, "--head", 7, "--text", "x")
    assert code == 2 and "--head 7: the model has heads 0..1" in out.err


def test_heads_audit_mask_and_merge(files, model, capsys):
    code, audit = _run(capsys, "heads", "audit", model, "--data", files / "test.jsonl", "--out", files / "a.json", "--json")
    assert code == 0 and len(audit["heads"]) == 2
    assert json.loads((files / "a.json").read_text())["flagged"] == audit["flagged"]
    # on the "brief" pairs alone the detailed head prefers the rejected (longer) answer
    lines = [l for l in (files / "test.jsonl").read_text().splitlines() if '"brief"' in l]
    (files / "brief.jsonl").write_text("\n".join(lines) + "\n")
    code, brief = _run(capsys, "heads", "audit", model, "--data", files / "brief.jsonl", "--json")
    assert code == 0 and len(brief["flagged"]) == 1
    code, masked = _run(capsys, "heads", "mask", model, "--head", brief["flagged"][0], "--out", files / "m2", "--json")
    assert code == 0 and masked["masked_heads"] == brief["flagged"]
    code, after = _run(capsys, "heads", "audit", files / "m2", "--data", files / "brief.jsonl", "--json")
    assert code == 0 and after["routed_accuracy"] >= brief["routed_accuracy"]
    # the two heads disagree on nearly every pair: nothing to merge, the model is copied
    code, merged = _run(capsys, "heads", "merge", model, "--data", files / "train.jsonl", "--out", files / "m3",
                        "--min-agreement", 0.5, "--epochs", 2, "--json")
    assert code == 0 and merged["heads_after"] == 2 and merged["agreement"][0][1] < 0.5
    assert json.loads((files / "m3" / "config.json").read_text())["num_heads"] == 2


def test_heads_bad_input_is_one_line_and_exit_2(files, model, capsys):
    code, out = _run(capsys, "heads", "mask", model, "--head", 0, "--head", 1, "--out", files / "m2")
    assert code == 2 and "would leave none of the 2 heads" in out.err and not (files / "m2").exists()
    code, out = _run(capsys, "heads", "audit", model, "--data", files / "test.jsonl", "--alpha", 2)
    assert code == 2 and "--alpha must be in (0, 1)" in out.err
    code, out = _run(capsys, "heads", "merge", model, "--data", files / "train.jsonl", "--out", files / "m3",
                     "--min-agreement", 0.1)
    assert code == 2 and "--min-agreement must be in [0.5, 1]" in out.err


def test_train_heads_auto_writes_the_curve(files, capsys):   # noqa: F811
    code, result = _train(files, capsys, "--heads", "auto", "--max-heads", 3)
    assert code == 0 and result["heads"] == result["heads_auto"]["chosen"] >= 2   # two contexts need two heads
    assert (files / "model" / "heads_auto.png").is_file()
    config = json.loads((files / "model" / "config.json").read_text())
    assert config["num_heads"] == result["heads"] and config["metrics"]["heads_auto"]["grid"] == [1, 2, 3]
    code, out = _train(files, capsys, "--heads", "many", out="m2")
    assert code == 2 and "--heads must be a number of heads or auto" in out.err

