"""``micro-rm adapt``, ``feedback`` and ``user show|reset`` end to end, with the tiny word-vector
backbone of test_train_cli (no download)."""

from __future__ import annotations

import json

import pytest
from test_train_cli import WordBackbone, _records

from micro_rm.cli import main
from micro_rm.data.readers import write_pairs


@pytest.fixture(autouse=True)
def fake_backbone(monkeypatch):
    import micro_rm.features.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda name, **kwargs: WordBackbone())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    write_pairs(_records(400, 0), root / "train.jsonl")
    write_pairs(_records(100, 1), root / "test.jsonl")
    bare = [{k: v for k, v in r.items() if k != "context"} for r in _records(10, 2)]
    write_pairs(bare, root / "bare.jsonl")
    return root


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out.strip().splitlines()[-1]) if code == 0 and "--json" in argv else out)


@pytest.fixture(scope="module")
def stage1(files):
    """A stage-1 model whose router read the prompt only (module-scoped: trained once)."""
    import micro_rm.features.backbones as backbones

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backbones, "load_backbone", lambda name, **kwargs: WordBackbone())
        patch.setenv("MICRO_RM_CACHE", str(files / "cache"))
        code = main(["train", "--data", str(files / "train.jsonl"), "--backbone", "fake-words",
                     "--heads", "2", "--out", str(files / "stage1"), "--epochs", "20", "--lr", "0.02",
                     "--router-input", "prompt", "--balance", "marginal", "--val-fraction", "0"])
        assert code == 0
        for variant, heads in (("static", "2"), ("single", "1")):
            assert main(["train", "--data", str(files / "train.jsonl"), "--backbone", "fake-words", "--heads",
                         heads, "--variant", variant, "--out", str(files / variant), "--epochs", "2"]) == 0
    return files / "stage1"


def _accuracy(capsys, model, files):
    code, result = _run(capsys, "eval", "--model", model, "--data", files / "test.jsonl", "--json")
    assert code == 0
    return result["mean_accuracy"]


def test_adapt_learns_to_route_by_context(files, stage1, capsys, tmp_path):
    code, result = _run(capsys, "adapt", "--model", stage1, "--data", files / "train.jsonl", "--budget", 20,
                        "--tau", "auto", "--out", tmp_path / "adapted", "--json")
    assert code == 0
    assert result["pairs"] == 40 and result["pairs_per_group"] == {"brief": 20, "detailed": 20}
    assert set(result["cv_nll"]) == {"keep", "0.001", "0.01", "0.1", "1", "10"}
    best = min((v, t) for t, v in result["cv_nll"].items() if t != "keep")[1]
    assert str(result["tau"]) in ("keep", best) if result["tau"] == "keep" else f"{result['tau']:g}" == best
    config = json.loads((tmp_path / "adapted" / "config.json").read_text())
    assert config["feature"]["router_input"] == "context" and config["training"]["stage2"]["budget"] == 20
    before, after = _accuracy(capsys, stage1, files), _accuracy(capsys, tmp_path / "adapted", files)
    assert before < 0.75 and after > 0.9         # the prompt alone cannot tell brief from detailed


def test_adapt_with_a_budget_larger_than_the_data_warns_and_uses_all(files, stage1, capsys, caplog, tmp_path):
    code, result = _run(capsys, "adapt", "--model", stage1, "--data", files / "test.jsonl", "--budget", 80,
                        "--out", tmp_path / "a", "--json")
    assert code == 0 and result["pairs"] == 100
    assert "budget 80 per group is more than 2 group(s) hold: 'brief' (50), 'detailed' (50)" in caplog.text


@pytest.mark.parametrize("argv, message", [
    (["--tau", "0"], "`tau` must be a finite number ≥ 1e-08"),
    (["--tau", "-1e-3"], "`tau` must be a finite number ≥ 1e-08"),
    (["--tau", "hot"], "`tau` must be a finite number ≥ 1e-08 or 'auto', got 'hot'"),
    (["--folds", "1"], "`folds` must be"),
    (["--budget", "0"], "`budget` must be an integer in [1, 1,000,000]"),
])
def test_adapt_bad_settings_exit_2(files, stage1, capsys, tmp_path, argv, message):
    code, out = _run(capsys, "adapt", "--model", stage1, "--data", files / "train.jsonl", "--out",
                     tmp_path / "a", *argv)
    assert code == 2 and message in out.err and not (tmp_path / "a").exists()


def test_adapt_pairs_without_context_exit_2(files, stage1, capsys, tmp_path):
    code, out = _run(capsys, "adapt", "--model", stage1, "--data", files / "bare.jsonl",
                     "--out", tmp_path / "a")
    assert code == 2 and "10 of 10 pairs have no `context`" in out.err


@pytest.mark.parametrize("variant", ["static", "single"])
def test_adapt_a_model_without_router_exits_2(files, stage1, capsys, tmp_path, variant):
    code, out = _run(capsys, "adapt", "--model", files / variant, "--data", files / "train.jsonl",
                     "--out", tmp_path / "a")
    assert code == 2 and f"a '{variant}' model has none" in out.err


def test_feedback_show_and_reset(files, stage1, capsys, tmp_path):
    state = tmp_path / "state.db"
    write_pairs([r for r in _records(40, 3) if r["attribute"] == "brief"], tmp_path / "ana.jsonl")
    code, result = _run(capsys, "feedback", "--model", stage1, "--state", state, "--user", "ana",
                        "--data", tmp_path / "ana.jsonl", "--json")
    assert code == 0 and result["added"] == 20 and result["num_feedback"] == 20
    assert len(result["cumulative_loss"]) == 2 and sum(result["hedge_factor"]) == pytest.approx(1.0)
    assert max(result["hedge_factor"]) > 0.9                  # one head explains "brief" answers
    code, again = _run(capsys, "feedback", "--model", stage1, "--state", state, "--user", "ana",
                       "--data", tmp_path / "ana.jsonl", "--json", "--eta", 0.5)
    assert again["num_feedback"] == 40
    assert again["cumulative_loss"] == pytest.approx([2 * s for s in result["cumulative_loss"]])
    code, shown = _run(capsys, "user", "show", "ana", "--state", state, "--json")
    assert code == 0 and shown["cumulative_loss"] == again["cumulative_loss"] and shown["num_feedback"] == 40
    code, _ = _run(capsys, "user", "reset", "ana", "--state", state, "--json")
    assert code == 0
    code, out = _run(capsys, "user", "show", "ana", "--state", state)
    assert code == 2 and "unknown user 'ana'" in out.err


def test_an_adapted_model_shares_its_stage1_users_state(files, stage1, capsys, tmp_path):
    """The state depends on the heads only, and stage 2 does not touch them."""
    assert _run(capsys, "adapt", "--model", stage1, "--data", files / "train.jsonl", "--budget", 5,
                "--out", tmp_path / "adapted")[0] == 0
    for model in (stage1, tmp_path / "adapted"):
        code, _ = _run(capsys, "feedback", "--model", model, "--state", tmp_path / "s.db", "--user", "bo",
                       "--data", files / "test.jsonl")
        assert code == 0


def test_feedback_bad_input_exits_2(files, stage1, capsys, tmp_path):
    state = tmp_path / "state.db"
    code, out = _run(capsys, "feedback", "--model", stage1, "--state", state, "--user", "ana",
                     "--data", files / "test.jsonl", "--eta", 0)
    assert code == 2 and "--eta must be a finite number > 0" in out.err
    assert _run(capsys, "feedback", "--model", stage1, "--state", state, "--user", "ana",
                "--data", files / "test.jsonl")[0] == 0
    code, out = _run(capsys, "feedback", "--model", files / "static", "--state", state, "--user", "ana",
                     "--data", files / "test.jsonl")
    assert code == 2 and "was written for model" in out.err           # a state file of another model
    code, out = _run(capsys, "user", "show", "nobody", "--state", state)
    assert code == 2 and "unknown user 'nobody'" in out.err and "known users: ana" in out.err
    code, out = _run(capsys, "user", "reset", "nobody", "--state", state)
    assert code == 2 and "unknown user 'nobody'" in out.err
    code, out = _run(capsys, "user", "show", "ana", "--state", tmp_path / "missing.db")
    assert code == 2 and "does not exist" in out.err


def test_eval_as_a_user_routes_with_their_feedback(files, stage1, capsys, tmp_path):
    """The stage-1 router reads the prompt only, so it cannot tell brief from detailed; a user
    who labelled 20 brief pairs is evaluated with their Hedge weights, as the service scores."""
    state = tmp_path / "state.db"
    brief = [r for r in _records(40, 3) if r["attribute"] == "brief"]
    write_pairs(brief, tmp_path / "ana.jsonl")
    write_pairs([r for r in _records(100, 1) if r["attribute"] == "brief"], tmp_path / "ana-test.jsonl")
    assert _run(capsys, "feedback", "--model", stage1, "--state", state, "--user", "ana",
                "--data", tmp_path / "ana.jsonl")[0] == 0
    code, router = _run(capsys, "eval", "--model", stage1, "--data", tmp_path / "ana-test.jsonl", "--json")
    code, as_ana = _run(capsys, "eval", "--model", stage1, "--data", tmp_path / "ana-test.jsonl", "--json",
                        "--state", state, "--user", "ana")
    assert code == 0 and as_ana["user"] == "ana"
    assert as_ana["mean_accuracy"] > 0.9 > router["mean_accuracy"]


@pytest.mark.parametrize("argv, message", [
    (["--user", "ana"], "--user and --state go together"),
    (["--state", "STATE"], "--user and --state go together"),
    (["--user", "nobody", "--state", "STATE"], "unknown user 'nobody'"),
    (["--user", "ana", "--state", "MISSING"], "no such state file"),
    (["--user", "", "--state", "STATE"], "--user '' is not a valid user id"),
])
def test_eval_as_a_user_bad_input_exits_2(files, stage1, capsys, tmp_path, argv, message):
    state = tmp_path / "state.db"
    assert _run(capsys, "feedback", "--model", stage1, "--state", state, "--user", "ana",
                "--data", files / "test.jsonl")[0] == 0
    argv = [str(state) if a == "STATE" else str(tmp_path / "missing.db") if a == "MISSING" else a for a in argv]
    code, out = _run(capsys, "eval", "--model", stage1, "--data", files / "test.jsonl", *argv)
    assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("command", ["show", "reset"])
def test_user_commands_apply_the_user_id_rule(tmp_path, capsys, command):
    code, out = _run(capsys, "user", command, "", "--state", tmp_path / "state.db")
    assert code == 2 and "is not a valid user id" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "state.db").exists()
