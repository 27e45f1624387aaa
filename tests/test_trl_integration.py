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
