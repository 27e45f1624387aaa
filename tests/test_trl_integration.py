"""The TRL reward function returns what /score returns, for strings, chat messages, per-sample
contexts and users; best-of-n picks the highest reward."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from micro_rm.errors import MicroRMError
from micro_rm.integrations.trl import MicroRMRewardFunction, best_of_n
from test_serve import ADMIN, BAD, GOOD, PROMPT, bearer, build_scorer, make_settings


@pytest.fixture(scope="module")
def scorer():
    return build_scorer()


def test_reward_function_returns_the_numbers_of_score(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path)
    completions = [GOOD, BAD, "Heat death."]
    with TestClient(create_app(settings, scorer=scorer)) as client:
        client.post("/feedback", json=[{"user_id": "ana", "prompt": PROMPT, "chosen": BAD, "rejected": GOOD}] * 2,
                    headers=bearer(ADMIN))
        plain = client.post("/score", json={"prompt": PROMPT, "responses": completions,
                                            "context": "I teach physics."}, headers=bearer(ADMIN)).json()
        ana = client.post("/score", json={"prompt": PROMPT, "responses": completions, "user_id": "ana"},
                          headers=bearer(ADMIN)).json()
        reward = MicroRMRewardFunction(scorer, context="I teach physics.", state=settings.state,
                                       cache_dir=settings.cache_dir)
        assert reward.__name__ == "micro_rm"
        got = reward([PROMPT] * 3, completions)
        np.testing.assert_allclose(got, [s["reward"] for s in plain["scores"]], rtol=1e-6, atol=1e-7)
        # a user_id column (and an empty context column: no context) scores with the user's weights
        got = reward([PROMPT] * 3, completions, user_id=["ana"] * 3, context=[None] * 3)
        assert got != [s["reward"] for s in plain["scores"]]
        reward_no_context = MicroRMRewardFunction(scorer, state=settings.state, cache_dir=settings.cache_dir)
        got = reward_no_context([PROMPT] * 3, completions, user_id=["ana"] * 3, completion_ids=[[1], [2], [3]])
        np.testing.assert_allclose(got, [s["reward"] for s in ana["scores"]], rtol=1e-6, atol=1e-7)


def test_conversational_samples_and_per_sample_context(scorer):
    reward = MicroRMRewardFunction(scorer, disk_cache=False)
    prompts = [[{"role": "user", "content": PROMPT}]] * 2
    completions = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": BAD}]]
    both = reward(prompts, completions, context=["I am a child.", "I am a physicist."])
    one = reward(prompts[1:], completions[1:], context=["I am a physicist."])
    assert len(both) == 2 and both[1] == pytest.approx(one[0], rel=1e-5)  # batched vs alone
    assert reward(prompts, completions, context=["I am a child."] * 2)[1] != pytest.approx(both[1], rel=1e-9)


def test_reward_function_errors_name_the_fix(scorer):
    reward = MicroRMRewardFunction(scorer, disk_cache=False)
    with pytest.raises(MicroRMError, match="got 1 prompts and 2 completions"):
        reward([PROMPT], [GOOD, BAD])
    with pytest.raises(MicroRMError, match="needs the per-user state: pass state="):
        reward([PROMPT], [GOOD], user_id=["ana"])
    with pytest.raises(MicroRMError, match="the `context` column has 1 values for 2 completions"):
        reward([PROMPT] * 2, [GOOD, BAD], context=["x"])


def test_best_of_n_picks_the_highest_reward(scorer):
    reward = MicroRMRewardFunction(scorer, disk_cache=False)
    candidates = ["Heat death.", BAD, GOOD]
    best = best_of_n(PROMPT, candidates, reward)
    assert best.rewards == reward([PROMPT] * 3, candidates)
    assert best.index == int(np.argmax(best.rewards)) and best.text == candidates[best.index]
    with pytest.raises(MicroRMError, match="at least one candidate"):
        best_of_n(PROMPT, [], reward)


# ----- issue 13: TRL details -------------------------------------------------------------------
def test_reward_function_pickles_and_gives_the_same_rewards(tmp_path, scorer):
    """TRL's async GRPO trainer pickles its reward functions into a rollout process."""
    import pickle

    reward = MicroRMRewardFunction(scorer, context="I teach physics.", state=f"sqlite:///{tmp_path / 's.db'}",
                                   name="micro_rm_physics", cache_dir=tmp_path / "features")
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.__name__ == "micro_rm_physics" and copy.context == "I teach physics."
    np.testing.assert_allclose(copy([PROMPT] * 2, [GOOD, BAD]), reward([PROMPT] * 2, [GOOD, BAD]), rtol=1e-6)
    from micro_rm.online import open_store

    with_store = MicroRMRewardFunction(scorer, disk_cache=False,
                                       state=open_store(f"sqlite:///{tmp_path / 's.db'}", scorer.model_id, scorer.num_heads))
    with pytest.raises(MicroRMError, match="cannot be pickled; pass state='sqlite:///state.db'"):
        pickle.dumps(with_store)


def test_two_instances_log_under_their_own_names(scorer):
    pytest.importorskip("trl")
    from trl.trainer.utils import get_callable_name  # what GRPOTrainer logs rewards/<name> under

    a = MicroRMRewardFunction(scorer, disk_cache=False, name="micro_rm_child")
    b = MicroRMRewardFunction(scorer, disk_cache=False, name="micro_rm_physicist")
    assert [get_callable_name(a), get_callable_name(b)] == ["micro_rm_child", "micro_rm_physicist"]
    with pytest.raises(MicroRMError, match="name must be a non-empty string"):
        MicroRMRewardFunction(scorer, disk_cache=False, name="")


def test_typed_content_blocks_and_tool_calls_are_read_as_text(scorer):
    reward = MicroRMRewardFunction(scorer, disk_cache=False)
    plain = reward([[{"role": "user", "content": PROMPT}]], [[{"role": "assistant", "content": GOOD}]])
    blocks = reward([[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]],
                    [[{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]])
    assert blocks == pytest.approx(plain, rel=1e-6)     # not the repr of the block list
    call = {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function":
                                                                  {"name": "search", "arguments": '{"q": "entropy"}'}}]}
    none = reward([[{"role": "user", "content": PROMPT}]], [[{"role": "assistant", "content": None}]])
    tool = reward([[{"role": "user", "content": PROMPT}]], [[call]])
    literal = reward([[{"role": "user", "content": PROMPT}]], [[{"role": "assistant", "content": "None"}]])
    assert none != pytest.approx(literal, rel=1e-6) and tool != pytest.approx(none, rel=1e-6)
    with pytest.raises(MicroRMError, match="completions\\[0\\]\\[0\\]: content block 1 has type 'image_url'; "
                                           "a MiCRo reward model reads text only"):
        reward([PROMPT], [[{"role": "assistant", "content": [{"type": "text", "text": "see"},
                                                             {"type": "image_url", "image_url": "x.png"}]}]])


def test_a_system_message_is_the_samples_context(scorer):
    reward = MicroRMRewardFunction(scorer, disk_cache=False, context="I am a child.")
    user = [{"role": "user", "content": PROMPT}]
    system = [{"role": "system", "content": "I am a physicist."}, *user]
    completion = [[{"role": "assistant", "content": GOOD}]]
    by_column = reward([user], completion, context=["I am a physicist."])
    assert reward([system], completion) == pytest.approx(by_column, rel=1e-6)
    assert reward([user], completion) == pytest.approx(reward([user], completion, context=["I am a child."]), rel=1e-6)
    assert reward([system], completion, context=["I am a child."]) != pytest.approx(by_column, rel=1e-6)


def _tiny_policy():
    """A one-layer Llama on the default backbone's (offline) WordPiece tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from micro_rm.features.backbones.sources import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    tokenizer.eos_token = "[SEP]"
    tokenizer.model_input_names = ["input_ids", "attention_mask"]   # no token_type_ids for generate
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.cls_token_id)
    return LlamaForCausalLM(config), tokenizer


@pytest.mark.trl
@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_grpo_trainer_runs_two_steps_with_the_reward_function(tmp_path, scorer, conversational):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    reward = MicroRMRewardFunction(scorer, disk_cache=False, name="micro_rm_test")
    seen = []
    original = reward.routed
    reward.routed = lambda *a, **k: seen.append(a) or original(*a, **k)
    prompt = [{"role": "user", "content": PROMPT}] if conversational else PROMPT
    rows = [{"prompt": prompt, "context": c} for c in ("I am a child.", "I am a physicist.")] * 4
    policy, tokenizer = _tiny_policy()
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, logging_steps=1, report_to=[],
                      save_strategy="no", use_cpu=True, bf16=False, seed=0)
    trainer = GRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=[reward],
                          train_dataset=Dataset.from_list(rows), args=args)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/micro_rm_test/mean" in h]
    assert len(logged) == 2 and all(np.isfinite(h["rewards/micro_rm_test/mean"]) for h in logged)
    assert len(seen) == 2 and all(len(contexts) == 2 for _, _, contexts, _ in seen)  # the context column arrived


@pytest.mark.trl
def test_the_grpo_example_runs_as_written_on_cpu_offline(tmp_path):
    """Regression (issue 26): examples/trl_grpo_reward.py raised on a CPU machine (no `use_cpu`)
    and needed a Hub policy. Its defaults now train a toy local policy for 2 steps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_serve import build_model

    pytest.importorskip("trl")
    build_model().save_pretrained(tmp_path / "model")
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "examples/trl_grpo_reward.py", "--model", str(tmp_path / "model"),
                          "--out", str(tmp_path / "grpo")], cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 GRPO steps; mean reward per step:" in run.stdout
