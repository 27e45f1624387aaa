"""The issue's "done when" on real data: a model trained on DSP, served, gives two users whose
feedback disagrees different rankings. Skipped when ../shared/data is absent."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from fastapi.testclient import TestClient

from test_serve import ADMIN, bearer, make_settings, static_backbone

pytestmark = pytest.mark.realdata


def test_users_with_opposite_feedback_get_opposite_rankings_on_dsp(shared_data, tmp_path):
    from micro_rm.data.builders import build_pairs
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize
    from micro_rm.serve.app import create_app
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.train.config import Stage1Config
    from micro_rm.train.stage1 import fit_stage1

    by_prompt: OrderedDict[str, list[dict]] = OrderedDict()
    for pair in build_pairs("dsp", shared_data / "dsp-domain-specific-preference"):
        by_prompt.setdefault(pair["prompt"], []).append(pair)
    prompts = list(by_prompt)
    train, feedback, held_out = prompts[:500], prompts[500:520], prompts[600:]
    backbone = static_backbone()
    features, _ = featurize([p for q in train for p in by_prompt[q]], backbone,
                            FeatureCache(tmp_path / "features"), progress=False)
    model, _ = fit_stage1(features, Stage1Config(heads=4, epochs=20, lr=0.05, balance="marginal"), progress=False)
    model.config.backbone = backbone.fingerprint()
    model.config.feature = {"router_input": "context", "context_in_reward": False}

    def answer(prompt: str, domain: str) -> str:    # the response written for ``domain``
        return next(p["chosen"] for p in by_prompt[prompt] if p["attribute"] == domain)

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, scorer=RewardScorer(model, backbone))) as client:
        for user, (win, lose) in (("ana", ("academy", "entertainment")), ("bo", ("entertainment", "academy"))):
            pairs = [{"user_id": user, "prompt": q, "chosen": answer(q, win), "rejected": answer(q, lose)}
                     for q in feedback]
            assert client.post("/feedback", json=pairs, headers=bearer(ADMIN)).status_code == 200
        flipped = 0
        for q in held_out:
            body = {"prompt": q, "responses": [answer(q, "academy"), answer(q, "entertainment")]}
            ranks = [client.post("/score", json={**body, "user_id": u}, headers=bearer(ADMIN)).json()["ranking"]
                     for u in ("ana", "bo")]
            flipped += ranks == [[0, 1], [1, 0]]
    # Where every head agrees no weighting can flip the order; on most prompts they do not.
    assert flipped / len(held_out) > 0.4, f"rankings differ on only {flipped} of {len(held_out)} prompts"
