"""`micro-rm demo` with the static backbone at a tiny size; its config matches configs/demo.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from micro_rm.cli.app import main
from micro_rm.experiment.config import ExperimentConfig
from micro_rm.experiment.demo import DEMO_CONFIG, demo_config


def test_demo_yaml_matches_the_demo():
    shipped = ExperimentConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    shipped.path = None
    assert shipped.to_dict() == demo_config().to_dict()
    assert DEMO_CONFIG["backbone"]["name"] == "static"      # measured: under a minute from empty caches


def test_demo_runs_with_static_backbone(tmp_path, capsys):
    code = main(["demo", "--backbone", "static", "--prompts", "40", "--out", str(tmp_path / "demo"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["report"] == str(tmp_path / "demo")
    assert set(result["methods"]) >= {"micro", "single", "static", "oracle"}
    assert (tmp_path / "demo" / "report.md").is_file() and (tmp_path / "demo" / "budget_curve.png").is_file()


def test_demo_prints_table_and_paths(tmp_path, capsys):
    code = main(["demo", "--backbone", "static", "--prompts", "30", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["method", "mean"] and "report: " in out and "plots:" in out


def test_demo_too_small(tmp_path, capsys):
    assert main(["demo", "--backbone", "static", "--prompts", "5", "--out", str(tmp_path)]) == 2
    assert "--prompts must be at least 20" in capsys.readouterr().err


def test_out_folder_holding_other_files_is_refused_and_left_untouched(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for argv in (["demo", "--backbone", "static", "--prompts", "20", "--out", str(folder)],
                 ["experiment", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"),
                  "--backbone", "static", "--out", str(folder)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no micro-rm report wrote" in err and "--force" in err
        assert [p.name for p in folder.iterdir()] == ["config.json"]


def test_force_writes_and_a_folder_of_an_earlier_run_is_rewritten(tmp_path, capsys):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    argv = ["demo", "--backbone", "static", "--prompts", "20", "--out", str(folder), "--json"]
    assert main([*argv, "--force"]) == 0
    assert (folder / "results.json").is_file() and (folder / "notes.txt").read_text() == "mine"
    assert main(argv) == 0          # its results.json marks it as a report folder
