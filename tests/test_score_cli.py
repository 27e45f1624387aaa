"""`micro-rm score`: one JSON line per record with the routed reward of each response, per-head
rewards and the weights; --context / --user / --state; bad input is one line, exit 2, no file.
And `python -m micro_rm` runs the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from micro_rm.cli.app import main
from test_serve import BAD, GOOD, PROMPT, build_model


@pytest.fixture
def model_dir(tmp_path):
    build_model().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_writes_rewards_heads_and_weights_per_record(tmp_path, model_dir):
    from micro_rm.integrations.trl import MicroRMRewardFunction

    rows = [{"id": "a", "prompt": PROMPT, "responses": [GOOD, BAD, "Heat death."]},
            {"prompt": PROMPT, "response": GOOD, "context": "I am a physicist."},
            {"prompt": [{"role": "user", "content": PROMPT}], "chosen": [{"role": "assistant", "content": GOOD}],
             "rejected": [{"role": "assistant", "content": BAD}]}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "out.jsonl"),
                 "--context", "I am a child."]) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 3 and out[0]["id"] == "a" and [len(o["rewards"]) for o in out] == [3, 1, 2]
    reward = MicroRMRewardFunction(str(model_dir))
    expected = reward([PROMPT] * 3, [GOOD, BAD, "Heat death."], context=["I am a child."] * 3)
    np.testing.assert_allclose(out[0]["rewards"], expected, rtol=1e-5)
    for o in out:
        assert np.shape(o["head_rewards"]) == (len(o["rewards"]), 2) and sum(o["weights"]) == pytest.approx(1.0)
        np.testing.assert_allclose(np.asarray(o["head_rewards"]) @ o["weights"], o["rewards"], rtol=1e-5)
        assert o["weights"] == o["router_weights"]          # no user: the router's weights
    assert out[0]["context"] == "I am a child." and out[1]["context"] == "I am a physicist."
    assert out[1]["rewards"][0] != pytest.approx(out[0]["rewards"][0], rel=1e-6)   # its own context routes it


def test_score_for_a_user_uses_their_online_weights(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": PROMPT, "responses": [GOOD, BAD]}])
    state = f"sqlite:///{tmp_path / 'state.db'}"
    from micro_rm.online import open_store
    from micro_rm.online.identity import state_model_id

    with open_store(state, state_model_id(build_model()), 2) as store:
        store.apply_feedback("ana", np.array([[1.0, 0.0]] * 5))   # head 0 (prefers GOOD) lost five times
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "ana.out"),
                 "--user", "ana", "--state", state]) == 0
    ana = read_jsonl(tmp_path / "ana.out")[0]
    assert ana["user_id"] == "ana" and ana["weights"] != ana["router_weights"]
    assert ana["rewards"][1] > ana["rewards"][0]             # ana preferred the bad answer


@pytest.mark.parametrize("rows, args, message", [
    ([{"responses": [GOOD]}], [], "in.jsonl line 1: missing field `prompt`"),
    ([{"prompt": PROMPT}], [], "no responses to score; give `responses`"),
    ([{"prompt": PROMPT, "responses": []}], [], "`responses` must be a non-empty list"),
    ([{"prompt": PROMPT, "response": GOOD}], ["--user", "ana"], "needs the per-user state: pass --state"),
])
def test_score_bad_input_is_one_line_and_no_file(tmp_path, model_dir, capsys, rows, args, message):
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_python_dash_m_micro_rm_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "micro_rm", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Usage: micro-rm" in result.stdout and "score" in result.stdout


def test_readme_claim_score_with_state_never_changes_the_state(tmp_path, model_dir, capsys):
    """README ("the state is only read: it is byte-identical afterwards") and --state's help:
    scoring reads users' weights and never changes the state. The state
    folder is byte-identical afterwards (no new file: no -wal/-shm left, no new database), for a
    known user, an unknown one and a record's own user_id; a missing state file is refused, not made."""
    from pathlib import Path

    from micro_rm.online import open_store
    from micro_rm.online.identity import state_model_id

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "the state is only read: it is byte-identical afterwards" in readme
    folder = tmp_path / "state"
    folder.mkdir()
    with open_store(folder / "state.db", state_model_id(build_model()), 2) as store:
        store.apply_feedback("ana", np.array([[1.0, 0.0]] * 5))
    snapshot = {p.name: p.read_bytes() for p in folder.iterdir()}
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": PROMPT, "responses": [GOOD, BAD]},
                                               {"prompt": PROMPT, "response": GOOD, "user_id": "bo"}])
    for user in ("ana", "cy"):
        assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "out.jsonl"),
                     "--user", user, "--state", f"sqlite:///{folder / 'state.db'}"]) == 0
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == snapshot
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "out.jsonl"),
                 "--user", "ana", "--state", str(folder / "new.db")]) == 2
    assert "--state" in capsys.readouterr().err and not (folder / "new.db").exists()
