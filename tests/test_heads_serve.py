"""``GET /heads`` and masked heads in the service, on the static backbone of test_serve."""

from __future__ import annotations


def test_service_lists_heads_and_never_routes_to_a_masked_one(tmp_path):
    from fastapi.testclient import TestClient

    from micro_rm.heads.mask import mask_heads
    from micro_rm.serve.app import create_app
    from micro_rm.scoring.engine import RewardScorer
    from test_serve import ADMIN, BAD, GOOD, PROMPT, bearer, build_model, make_settings, new_user, static_backbone

    model = mask_heads(build_model(), [1])
    model.config.head_labels = ["prefers the good answer", "prefers the bad answer"]
    with TestClient(create_app(make_settings(tmp_path), scorer=RewardScorer(model, static_backbone()))) as client:
        heads = client.get("/heads").json()
        assert heads["masked_heads"] == [1]
        assert [h["masked"] for h in heads["heads"]] == [False, True]
        assert heads["heads"][1]["label"] == "prefers the bad answer"
        score = client.post("/score", json={"prompt": PROMPT, "responses": [GOOD, BAD]}, headers=bearer(ADMIN)).json()
        assert score["weights"] == [1.0, 0.0] and score["ranking"] == [0, 1]
        compare = client.post("/compare", json={"prompt": PROMPT, "a": BAD, "b": GOOD}, headers=bearer(ADMIN)).json()
        assert compare["weights"][1] == 0.0 and compare["p_a_beats_b"] < 0.5
        # a user whose feedback favours the masked head still gets weight 0 on it
        ana = new_user(client, "ana")
        out = client.post("/feedback", json={"prompt": PROMPT, "chosen": BAD, "rejected": GOOD}, headers=ana).json()
        assert out["users"][0]["feedback_weights"] == [1.0, 0.0] and out["users"][0]["weights"] == [1.0, 0.0]
        assert client.get("/users/ana", headers=ana).json()["feedback_weights"] == [1.0, 0.0]
