"""verl's custom reward function: compute_score reads prompt, context and user from extra_info
and returns what the service's /score returns; the batch form equals the single one; and verl
0.9.1's own reward loop (installed by `make install` without its GPU dependencies) loads it with
the README's settings and scores a rollout batch through a registered reward manager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from test_frameworks import framework, verl_overrides
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


def verl_config(overrides: list[str], tokenizer_path: str):
    """verl 0.9.1's full PPO trainer config (its generated ``_generated_ppo_trainer.yaml``) with
    command-line ``overrides`` applied as Hydra does: ``key=value`` must name an existing key,
    ``+key=value`` adds one."""
    from omegaconf import OmegaConf

    verl = framework("verl")
    config = OmegaConf.load(Path(verl.__file__).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml")
    OmegaConf.set_struct(config, True)
    for override in [*overrides, f"actor_rollout_ref.model.path={tokenizer_path}"]:
        key, value = override.split("=", 1)
        OmegaConf.update(config, key.lstrip("+"), value, force_add=key.startswith("+"))   # raises on an unknown key
    return config


def rollout_batch(tokenizer, rows: list[tuple[str, str, dict]]):
    """A verl ``DataProto`` as the rollout hands it to the reward loop: left-padded ``prompts``,
    right-padded ``responses``, their ``attention_mask``, and each row's ``data_source``,
    ``reward_model.ground_truth`` and ``extra_info``."""
    import torch
    from verl import DataProto

    width = 24
    prompts, responses, masks = [], [], []
    for prompt, response, _ in rows:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"][-width:]
        r = tokenizer(response, add_special_tokens=False)["input_ids"][:width]
        pad = tokenizer.pad_token_id
        prompts.append([pad] * (width - len(p)) + p)
        responses.append(r + [pad] * (width - len(r)))
        masks.append([0] * (width - len(p)) + [1] * (len(p) + len(r)) + [0] * (width - len(r)))
    column = lambda values: np.array(values, dtype=object)  # noqa: E731
    return DataProto.from_dict(
        tensors={"prompts": torch.tensor(prompts), "responses": torch.tensor(responses),
                 "attention_mask": torch.tensor(masks)},
        non_tensors={"data_source": column(["dsp"] * len(rows)),
                     "reward_model": column([{"ground_truth": None}] * len(rows)),
                     "extra_info": column([info for _, _, info in rows])})


@pytest.mark.frameworks
def test_verls_reward_loop_scores_a_batch_with_the_readmes_settings(model_env, monkeypatch):
    """verl 0.9.1's ``RewardLoopWorker`` (what each reward worker of ``main_ppo`` runs) built from
    the README's command-line settings: ``load_reward_manager`` → ``get_custom_reward_fn`` →
    ``load_extern_object("pkg://micro_rm.integrations.verl", "compute_score")`` with
    ``reward_kwargs`` bound, inside the ``naive`` manager's ``run_single``, per sample."""
    from micro_rm.features.backbones.sources import default_model_dir
    from micro_rm.integrations import common
    from micro_rm.integrations.verl import compute_score

    framework("verl")
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager import NaiveRewardManager

    monkeypatch.delenv("MICRO_RM_MODEL")          # the model comes from reward_kwargs, as in the README
    monkeypatch.setattr(common, "_loaded", {})
    model = str(model_env / "model")
    overrides = [o.replace("runs/dsp-adapted", model) for o in verl_overrides()]
    assert any(o.startswith("+reward.custom_reward_function.reward_kwargs.model=") for o in overrides)
    worker = RewardLoopWorker(verl_config(overrides, str(default_model_dir())))
    assert type(worker.reward_manager) is NaiveRewardManager

    tokenizer = worker.input_tokenizer
    rows = [(PROMPT, GOOD, {"prompt": PROMPT, "context": "I am a child.", "index": 0}),
            (PROMPT, GOOD, {"prompt": PROMPT, "context": "I am a physicist.", "index": 1}),
            (PROMPT, BAD, {"question": PROMPT, "index": 2})]
    out = worker.loop.run_until_complete(worker.compute_score_batch(rollout_batch(tokenizer, rows)))
    assert len(out) == 3
    for got, (prompt, response, info) in zip(out, rows):
        decoded = tokenizer.decode(tokenizer(response, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        direct = compute_score("dsp", decoded, None, {k: v for k, v in info.items() if k != "index"}, model=model)
        assert got["reward_score"] == pytest.approx(direct["score"], rel=1e-5)
        assert got["reward_extra_info"] == pytest.approx(direct, rel=1e-5)    # logged by verl
    assert out[0]["reward_score"] != pytest.approx(out[1]["reward_score"], rel=1e-6)   # the context routes
    scores = NaiveRewardManager.assemble_rm_scores(rollout_batch(tokenizer, rows), [o["reward_score"] for o in out])
    assert scores.shape == (3, 24) and float(scores.sum(1)[0]) == pytest.approx(out[0]["reward_score"], rel=1e-5)
