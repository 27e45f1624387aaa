"""verl's custom reward function: compute_score reads prompt, context and user from extra_info
and returns what the service's /score returns; the batch form equals the single one."""

from __future__ import annotations

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from test_serve import BAD, GOOD, PROMPT, build_model, build_scorer


@pytest.fixture
def model_env(tmp_path, monkeypatch):
    from micro_rm.integrations import common

    build_model().save_pretrained(tmp_path / "model")
    monkeypatch.setenv("MICRO_RM_MODEL", str(tmp_path / "model"))
    monkeypatch.setattr(common, "_loaded", {})      # one loaded model per test
    return tmp_path


def test_compute_score_reads_extra_info_and_matches_score(model_env):
    from micro_rm.integrations.trl import MicroRMRewardFunction
    from micro_rm.integrations.verl import compute_score, compute_score_batch

    reference = MicroRMRewardFunction(build_scorer())   # through the float16 feature cache, as compute_score
    child = compute_score("dsp", GOOD, None, {"prompt": PROMPT, "context": "I am a child.", "index": 3},
                          return_dict=True)    # verl's extra keyword arguments are ignored
    assert set(child) == {"score", "head0_reward", "head0_weight", "head1_reward", "head1_weight"}
    assert child["score"] == pytest.approx(reference([PROMPT], [GOOD], context=["I am a child."])[0], rel=1e-5)
    physicist = compute_score("dsp", GOOD, None, {"question": PROMPT, "context": "I am a physicist."})
    assert physicist["score"] != pytest.approx(child["score"], rel=1e-6)
    chat = compute_score("dsp", GOOD, None, {"prompt": np.array([{"role": "user", "content": PROMPT}], dtype=object),
                                             "context": "I am a child."})
    assert np.isfinite(chat["score"])
    batch = compute_score_batch(["dsp"] * 2, [GOOD, BAD], [None] * 2,
                                [{"prompt": PROMPT, "context": "I am a child."}, {"prompt": PROMPT}])
    assert batch[0]["score"] == pytest.approx(child["score"], rel=1e-5) and len(batch) == 2   # batched vs alone


def test_compute_score_uses_the_users_state(model_env):
    from micro_rm.integrations.verl import compute_score
    from micro_rm.online import open_store
    from micro_rm.online.identity import state_model_id

    state = f"sqlite:///{model_env / 'state.db'}"
    model = build_model()
    with open_store(state, state_model_id(model), 2) as store:
        store.apply_feedback("ana", np.array([[1.0, 0.0]] * 5))          # head 0 lost five times
    info = {"prompt": PROMPT, "user_id": "ana"}
    ana = compute_score("dsp", GOOD, None, info, state=state)
    assert ana["head1_weight"] > 0.9
    assert compute_score("dsp", GOOD, None, {"prompt": PROMPT}, state=state)["head1_weight"] < ana["head1_weight"]


def test_compute_score_errors_name_the_fix(model_env, monkeypatch):
    from micro_rm.integrations import common
    from micro_rm.integrations.verl import compute_score

    with pytest.raises(MicroRMError, match="no `prompt` \\(or `question`\\) in extra_info"):
        compute_score("dsp", GOOD, None, {"index": 0})
    with pytest.raises(MicroRMError, match="give each row an extra_info dict with `prompt`"):
        compute_score("dsp", GOOD, None, None)
    with pytest.raises(MicroRMError, match="extra_info `context` must be a string"):
        compute_score("dsp", GOOD, None, {"prompt": PROMPT, "context": 3})
    monkeypatch.delenv("MICRO_RM_MODEL")
    monkeypatch.setattr(common, "_loaded", {})
    with pytest.raises(MicroRMError, match="set \\$MICRO_RM_MODEL"):
        compute_score("dsp", GOOD, None, {"prompt": PROMPT})


def test_the_call_verls_reward_managers_make(model_env, monkeypatch):
    """NaiveRewardManager: keyword arguments, reward_kwargs (model=...) merged in, num_turns and
    rollout_reward_scores added to extra_info; BatchRewardManager: the plural keywords."""
    import importlib.util

    import micro_rm.integrations.verl as verl_module
    from micro_rm.integrations import common

    spec = importlib.util.spec_from_file_location("custom_module_1", verl_module.__file__)  # a file path, as verl loads it
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("MICRO_RM_MODEL")
    monkeypatch.setattr(common, "_loaded", {})
    info = {"prompt": PROMPT, "context": "I am a child.", "index": 7, "num_turns": None, "rollout_reward_scores": {}}
    one = module.compute_score(data_source="dsp", solution_str=GOOD, ground_truth=None, extra_info=dict(info),
                               model=str(model_env / "model"))
    batch = module.compute_score_batch(data_sources=["dsp"] * 2, solution_strs=[GOOD, BAD], ground_truths=[None] * 2,
                                       extra_infos=[dict(info)] * 2, model=str(model_env / "model"))
    assert batch[0]["score"] == pytest.approx(one["score"], rel=1e-5) and batch[1]["score"] != pytest.approx(one["score"])
