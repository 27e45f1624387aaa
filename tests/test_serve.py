"""The reward service: every endpoint, the auth matrix, limits, micro-batching and the feature
cache, online feedback (threads and processes lose no update), per-user rankings, fuzzing."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from micro_rm.online.hedge import DEFAULT_ETA, hedge_log_weights, pair_losses

TESTS = Path(__file__).resolve().parent
ADMIN = "admin-token-for-tests-0123456789"
K = 2
PROMPT = "How should I explain entropy?"
GOOD, BAD = "Entropy measures how many microstates fit a macrostate.", "lol idk, google it"


# ----- a tiny model on the static backbone, shared by the serve and TRL tests ------------------
@functools.lru_cache(maxsize=None)
def static_backbone():
    from micro_rm.features.backbones import load_backbone
    return load_backbone("static")


def encode(items) -> np.ndarray:
    """Vectors as the service sees them: through the feature cache's float16 storage."""
    return static_backbone().encode(items).astype(np.float16).astype(np.float32)


def build_model(seed: int = 0, split: tuple[str, str, str] = (PROMPT, GOOD, BAD)):
    """K = 2 heads that disagree on purpose: head 0 prefers ``GOOD`` to ``BAD`` by a reward gap
    of 4, head 1 the reverse; the router is a small random MLP (a non-uniform prior)."""
    from micro_rm.model import MixtureConfig, MixtureRewardModel

    backbone = static_backbone()
    torch.manual_seed(seed)
    model = MixtureRewardModel(MixtureConfig(num_heads=K, reward_dim=backbone.dim, route_dim=backbone.dim,
                                             backbone=backbone.fingerprint(),
                                             feature={"router_input": "context", "context_in_reward": False}))
    prompt, good, bad = split
    a, b = backbone.encode([backbone.reward_item(prompt, good), backbone.reward_item(prompt, bad)])
    direction = torch.from_numpy((a - b) / float(np.dot(a - b, a - b)) * 4.0)
    with torch.no_grad():
        model.heads.weight.copy_(torch.stack([direction, -direction]))
    return model.eval()


def build_scorer(seed: int = 0):
    from micro_rm.scoring.engine import RewardScorer
    return RewardScorer(build_model(seed), static_backbone())


@pytest.fixture(scope="module")
def scorer():
    return build_scorer()


def make_settings(tmp_path: Path, **overrides):
    from micro_rm.serve.settings import ServeSettings
    values = dict(model="unused", state=f"sqlite:///{tmp_path / 'state.db'}", admin_token=ADMIN,
                  cache_dir=str(tmp_path / "features"))
    values.update(overrides)
    return ServeSettings(**values)


@pytest.fixture
def service(tmp_path, scorer):
    """``(client, settings)`` of a fresh service (own state and cache) around the shared model."""
    from micro_rm.serve.app import create_app
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        yield client, settings


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_user(client, user_id: str) -> dict:
    response = client.post("/users", json={"user_id": user_id}, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return bearer(response.json()["token"])


def expected_rewards(scorer, prompt, responses, context=None, loss=None, eta=DEFAULT_ETA):
    b = scorer.backbone
    x = encode([b.reward_item(prompt, r) for r in responses])
    route = encode([b.route_item(prompt, context)])
    log_prior = torch.log_softmax(scorer.model.router(torch.from_numpy(route)), -1).double().detach().numpy()
    log_w = log_prior if loss is None else hedge_log_weights(log_prior, loss, eta)
    w = np.exp(log_w)[0]
    return scorer.model.rewards(x).astype(np.float64) @ w, w


# ----- endpoints -------------------------------------------------------------------------------
def test_healthz_docs_and_openapi(service, scorer):
    client, _ = service
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "model_id": scorer.model_id, "variant": "micro", "num_heads": K,
                      "backbone": "static", "eta": DEFAULT_ETA}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/score", "/compare", "/get_reward", "/feedback", "/users", "/users/{user_id}",
            "/healthz", "/metrics"} <= set(paths)


def test_score_returns_routed_head_rewards_and_weights(service, scorer):
    client, _ = service
    body = {"prompt": PROMPT, "responses": [GOOD, BAD, "Heat death."], "context": "I am a physicist."}
    out = client.post("/score", json=body, headers=bearer(ADMIN)).json()
    want, w = expected_rewards(scorer, PROMPT, body["responses"], body["context"])
    np.testing.assert_allclose([s["reward"] for s in out["scores"]], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["weights"], w, rtol=1e-5)
    assert out["weights"] == out["prior_weights"] and out["user_id"] is None and out["num_feedback"] == 0
    assert out["ranking"] == np.argsort(-np.asarray(want), kind="stable").tolist()
    assert len(out["scores"][0]["head_rewards"]) == K


def test_score_accepts_chat_messages(service):
    client, _ = service
    messages = [{"role": "user", "content": PROMPT}]
    out = client.post("/score", json={"prompt": messages, "responses": [[{"role": "assistant", "content": GOOD}]]},
                      headers=bearer(ADMIN))
    assert out.status_code == 200 and len(out.json()["scores"]) == 1


def test_compare_is_the_weighted_head_probability(service):
    client, _ = service
    ab = client.post("/compare", json={"prompt": PROMPT, "a": GOOD, "b": BAD}, headers=bearer(ADMIN)).json()
    ba = client.post("/compare", json={"prompt": PROMPT, "a": BAD, "b": GOOD}, headers=bearer(ADMIN)).json()
    assert ab["p_a_beats_b"] == pytest.approx(float(np.dot(ab["weights"], ab["head_probs"])))
    assert ab["p_a_beats_b"] + ba["p_a_beats_b"] == pytest.approx(1.0, abs=1e-6)
    assert ab["head_probs"][0] > 0.95 and ab["head_probs"][1] < 0.05   # the heads disagree by design


def test_get_reward_is_openrlhf_compatible_and_matches_score(service):
    client, _ = service
    score = client.post("/score", json={"prompt": PROMPT, "responses": [GOOD, BAD]}, headers=bearer(ADMIN)).json()
    # OpenRLHF sends query = prompt + response (decoded, maybe with padding first) and the prompts.
    body = {"query": ["<pad><pad>" + PROMPT + GOOD, PROMPT + BAD], "prompts": [PROMPT, PROMPT],
            "labels": ["", ""]}
    out = client.post("/get_reward", json=body, headers=bearer(ADMIN))
    assert out.status_code == 200, out.text
    np.testing.assert_allclose(out.json()["rewards"], [s["reward"] for s in score["scores"]], rtol=1e-5, atol=1e-6)
    by_separator = client.post("/get_reward", json={"query": [PROMPT + "\nASSISTANT:" + GOOD],
                                                    "separator": "\nASSISTANT:"}, headers=bearer(ADMIN))
    assert by_separator.status_code == 200 and len(by_separator.json()["rewards"]) == 1


@pytest.mark.parametrize("body, message", [
    ({"query": ["Hi there"]}, "give `prompts`"),
    ({"query": ["Hi there"], "prompts": ["Hi", "Ho"]}, "`prompts` has 2 texts but `query` has 1"),
    ({"query": ["Hi there"], "separator": "###"}, "does not contain the separator"),
    ({"query": ["Hi there"], "prompts": ["Hi"], "context": ["a", "b"]}, "`context` has 2 entries"),
])
def test_get_reward_refuses_queries_it_cannot_split(service, body, message):
    client, _ = service
    response = client.post("/get_reward", json=body, headers=bearer(ADMIN))
    assert response.status_code == 422
    assert __import__("re").search(message, response.json()["detail"])


def test_feedback_adds_each_heads_loss_to_the_users_state(service, scorer):
    client, settings = service
    ana = new_user(client, "ana")
    one = client.post("/feedback", json={"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}, headers=ana)
    assert one.status_code == 200, one.text
    b = scorer.backbone
    x = encode([b.reward_item(PROMPT, GOOD), b.reward_item(PROMPT, BAD)])
    loss = pair_losses(scorer.model.head_probs(x[:1], x[1:]))[0]
    state = one.json()["users"][0]
    assert state["user_id"] == "ana" and state["num_feedback"] == 1
    np.testing.assert_allclose(state["cumulative_loss"], loss, rtol=1e-6)
    batch = client.post("/feedback", json=[{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}] * 3, headers=ana)
    state = batch.json()["users"][0]
    assert batch.json()["accepted"] == 3 and state["num_feedback"] == 4
    np.testing.assert_allclose(state["cumulative_loss"], 4 * loss, rtol=1e-6)
    np.testing.assert_allclose(state["feedback_weights"],
                               np.exp(hedge_log_weights(np.log([0.5, 0.5]), 4 * loss, DEFAULT_ETA)))
    # the admin writes for anyone, and must say for whom
    assert client.post("/feedback", json={"prompt": PROMPT, "chosen": GOOD, "rejected": BAD},
                       headers=bearer(ADMIN)).status_code == 422
    two = client.post("/feedback", json=[{"user_id": "bo", "prompt": PROMPT, "chosen": BAD, "rejected": GOOD},
                                         {"user_id": "cy", "prompt": PROMPT, "chosen": GOOD, "rejected": BAD}],
                      headers=bearer(ADMIN)).json()
    assert [u["user_id"] for u in two["users"]] == ["bo", "cy"]
    # the implicit-prompt format of pair records works too
    conv = {"chosen": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": BAD}]}
    assert client.post("/feedback", json=conv, headers=ana).json()["users"][0]["num_feedback"] == 5


def test_feedback_refuses_an_invalid_pair_with_its_field(service):
    client, _ = service
    ana = new_user(client, "ana")
    response = client.post("/feedback", json={"prompt": PROMPT, "chosen": " ", "rejected": BAD}, headers=ana)
    assert response.status_code == 422 and response.json()["detail"] == "feedback: `chosen` is empty; fix it"
    assert client.post("/feedback", json=[], headers=ana).status_code == 422


def test_scoring_for_a_user_uses_the_router_prior_times_hedge(service, scorer):
    client, settings = service
    ana = new_user(client, "ana")
    state = client.post("/feedback", json=[{"prompt": PROMPT, "chosen": BAD, "rejected": GOOD}] * 2,
                        headers=ana).json()["users"][0]
    out = client.post("/score", json={"prompt": PROMPT, "responses": [GOOD, BAD], "user_id": "ana"},
                      headers=ana).json()
    want, w = expected_rewards(scorer, PROMPT, [GOOD, BAD], loss=np.asarray(state["cumulative_loss"]),
                               eta=settings.eta)
    np.testing.assert_allclose(out["weights"], w, rtol=1e-5)
    np.testing.assert_allclose([s["reward"] for s in out["scores"]], want, rtol=1e-5, atol=1e-6)
    assert out["num_feedback"] == 2 and out["weights"] != out["prior_weights"]


def test_rankings_differ_for_two_users_whose_feedback_disagrees(service):
    """The issue's "done when": ana prefers GOOD, bo prefers BAD; /score ranks accordingly."""
    client, _ = service
    ana, bo = new_user(client, "ana"), new_user(client, "bo")
    body = {"prompt": PROMPT, "responses": [BAD, GOOD]}
    before = client.post("/score", json=body, headers=ana).json()["ranking"]
    client.post("/feedback", json=[{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}] * 3, headers=ana)
    client.post("/feedback", json=[{"prompt": PROMPT, "chosen": BAD, "rejected": GOOD}] * 3, headers=bo)
    ranks = {user: client.post("/score", json={**body, "user_id": user}, headers=token).json()["ranking"]
             for user, token in (("ana", ana), ("bo", bo))}
    assert ranks == {"ana": [1, 0], "bo": [0, 1]}
    assert before in (ranks["ana"], ranks["bo"])          # the router alone gives one of them


def test_users_create_read_rotate_delete(service):
    client, _ = service
    admin = bearer(ADMIN)
    ana = new_user(client, "ana")
    assert client.post("/users", json={"user_id": "ana"}, headers=admin).status_code == 409
    assert client.post("/users", json={"user_id": "bad id!"}, headers=admin).status_code == 422
    info = client.get("/users/ana", headers=ana).json()
    assert info["num_feedback"] == 0 and info["has_token"] and info["feedback_weights"] == [0.5, 0.5]
    client.post("/feedback", json={"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}, headers=ana)
    assert client.get("/users", headers=admin).json() == ["ana"]
    assert client.get("/users/ana", headers=admin).json()["num_feedback"] == 1
    assert client.get("/users/nobody", headers=admin).status_code == 404
    rotated = client.post("/users/ana/token", headers=admin).json()["token"]
    assert client.get("/users/ana", headers=ana).status_code == 401          # the old token is gone
    ana = bearer(rotated)
    deleted = client.delete("/users/ana", headers=ana).json()
    assert deleted == {"user_id": "ana", "deleted_feedback": 1, "token_revoked": True}
    assert client.get("/users/ana", headers=admin).status_code == 404
    assert client.get("/users/ana", headers=ana).status_code == 401
    assert client.delete("/users/ana", headers=admin).status_code == 404


def _requests(user: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", "/score", {"prompt": PROMPT, "responses": [GOOD], "user_id": user}),
        ("POST", "/compare", {"prompt": PROMPT, "a": GOOD, "b": BAD, "user_id": user}),
        ("POST", "/get_reward", {"query": [PROMPT + GOOD], "prompts": [PROMPT], "user_id": user}),
        ("POST", "/feedback", {"user_id": user, "prompt": PROMPT, "chosen": GOOD, "rejected": BAD}),
        ("GET", f"/users/{user}", None),
        ("DELETE", f"/users/{user}", None),
    ]


@pytest.mark.parametrize("index", range(6))
def test_auth_matrix(service, index):
    """No token 401, a wrong token 401, another user's token 403, own token and admin 200."""
    client, _ = service
    ana, bo = new_user(client, "ana"), new_user(client, "bo")
    client.post("/feedback", json={"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}, headers=ana)
    method, path, body = _requests("ana")[index]
    call = lambda headers: client.request(method, path, json=body, headers=headers).status_code  # noqa: E731
    assert call({}) == 401
    assert call(bearer("mrm_not-a-token")) == 401
    assert call(bo) == 403
    assert call(ana) == 200
    if method != "DELETE":
        assert call(bearer(ADMIN)) == 200
    # admin-only endpoints
    assert client.post("/users", json={"user_id": "cy"}, headers=bo).status_code == 403
    assert client.get("/users", headers=bo).status_code == 403
    assert client.post("/users/cy/token", headers=bo).status_code == 403
    assert client.get("/users", headers={}).status_code == 401


def test_anonymous_scoring_is_opt_in(tmp_path, scorer):
    from micro_rm.serve.app import create_app
    from micro_rm.serve.deps import get_settings

    app = create_app(make_settings(tmp_path))
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:
        body = {"query": [PROMPT + GOOD], "prompts": [PROMPT]}
        assert client.post("/get_reward", json=body).status_code == 401
        client.app.dependency_overrides[get_settings] = lambda: make_settings(tmp_path, anonymous_scoring=True)
        assert client.post("/get_reward", json=body).status_code == 200
        assert client.post("/score", json={"prompt": PROMPT, "responses": [GOOD]}).status_code == 200
        assert client.post("/score", json={"prompt": PROMPT, "responses": [GOOD], "user_id": "ana"}).status_code == 401
        assert client.post("/feedback", json={"user_id": "ana", "prompt": PROMPT, "chosen": GOOD,
                                              "rejected": BAD}).status_code == 401
    assert app.state.settings.anonymous_scoring is False      # nothing was loaded for the unused app


def test_store_is_a_dependency_tests_can_override(service):
    from micro_rm.online import UserState
    from micro_rm.serve.deps import get_store

    client, _ = service

    class FixedStore:
        def get(self, user_id, missing_ok=False):
            return UserState(user_id, K, np.array([0.0, 50.0]), 7, "fixed")

    client.app.dependency_overrides[get_store] = FixedStore
    out = client.post("/score", json={"prompt": PROMPT, "responses": [BAD, GOOD], "user_id": "zed"},
                      headers=bearer(ADMIN)).json()
    assert out["num_feedback"] == 7 and out["weights"][0] > 0.999 and out["ranking"] == [1, 0]


# ----- limits ----------------------------------------------------------------------------------
def test_limits_answer_413_and_422_with_a_clear_message(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path, max_body_bytes=2000, max_texts=3, max_text_chars=100)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        admin = bearer(ADMIN)
        big = client.post("/score", content=b"{" + b" " * 3000 + b"}", headers={**admin, "Content-Type": "application/json"})
        assert big.status_code == 413 and "--max-body-bytes" in big.json()["detail"]

        def chunks():                        # no Content-Length: the limit still holds
            for _ in range(10):
                yield b" " * 500
        chunked = client.post("/score", content=chunks(), headers={**admin, "Content-Type": "application/json"})
        assert chunked.status_code == 413
        many = client.post("/score", json={"prompt": "p", "responses": ["r"] * 4}, headers=admin)
        assert many.status_code == 413 and "the limit is 3 (--max-texts)" in many.json()["detail"]
        many = client.post("/feedback", json=[{"user_id": "a", "prompt": "p", "chosen": "c", "rejected": "r"}] * 4,
                           headers=admin)
        assert many.status_code == 413
        long = client.post("/score", json={"prompt": "p", "responses": ["x" * 101]}, headers=admin)
        assert long.status_code == 422 and long.json()["detail"] == \
            "`responses[0]` has 101 characters; the limit is 100 (--max-text-chars)"
        surrogate = client.post("/score", content=b'{"prompt": "\\ud800", "responses": ["r"]}',
                                headers={**admin, "Content-Type": "application/json"})
        assert surrogate.status_code == 422 and "not valid Unicode" in surrogate.json()["detail"]
        typo = client.post("/score", json={"prompt": "p", "response": ["r"]}, headers=admin).json()
        assert typo["message"] == "body.responses: Field required"


# ----- features: micro-batching and caches -----------------------------------------------------
def test_concurrent_scores_share_one_backbone_forward(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path, batch_wait_ms=200.0)
    bodies = [{"prompt": f"prompt {i}", "responses": [f"answer {i}", f"reply {i}"]} for i in range(8)]
    with TestClient(create_app(settings, scorer=scorer)) as client:
        results = [None] * len(bodies)

        def call(i):
            results[i] = client.post("/score", json=bodies[i], headers=bearer(ADMIN)).json()
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        features = client.get("/stats").json()["features"]
        assert features["batches"] < len(bodies) and features["mean_batch_requests"] > 1
        assert features["encoded"] == 3 * len(bodies)
        # batched results equal one-at-a-time results (cached now)
        for body, batched in zip(bodies, results):
            alone = client.post("/score", json=body, headers=bearer(ADMIN)).json()
            np.testing.assert_allclose([s["reward"] for s in alone["scores"]],
                                       [s["reward"] for s in batched["scores"]], rtol=1e-6)
        assert client.get("/stats").json()["features"]["lru_hits"] >= 3 * len(bodies)


def test_seen_texts_come_from_memory_then_from_the_disk_cache(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    body = {"prompt": PROMPT, "responses": [GOOD, BAD]}
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:
        fresh = client.post("/score", json=body, headers=bearer(ADMIN)).json()
        again = client.post("/score", json=body, headers=bearer(ADMIN)).json()
        stats = client.get("/stats").json()["features"]
        assert stats["encoded"] == 3 and stats["lru_hits"] == 3 and fresh == again
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:   # a restart
        restarted = client.post("/score", json=body, headers=bearer(ADMIN)).json()
        stats = client.get("/stats").json()["features"]
        assert stats["encoded"] == 0 and stats["from_disk_cache"] == 3 and restarted == fresh


def today_rewards(tmp_path, scorer, settings, prompt, responses) -> list[float]:
    """The rewards of one /score request computed the way the service did before its disk writes
    moved off the request path: vectors written to a feature cache and read back."""
    from micro_rm.features.cache import FeatureCache
    from micro_rm.scoring.engine import one_prompt

    samples = one_prompt(prompt, responses, None, settings.limits)
    vectors, _ = FeatureCache(tmp_path / "read-back").get_or_encode(scorer.items(samples), scorer.backbone,
                                                                    progress=False)
    return scorer.score(samples, vectors, None, settings.eta).rewards.tolist()


def test_fresh_cached_and_restarted_answers_equal_the_read_back_route_bit_for_bit(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    responses = ["A fresh answer nobody cached.", "Another one, with float16-unfriendly vectors."]
    body = {"prompt": "A prompt seen for the first time?", "responses": responses}
    settings = make_settings(tmp_path)
    today = today_rewards(tmp_path, scorer, settings, body["prompt"], responses)
    answers = []
    with TestClient(create_app(settings, scorer=scorer)) as client:
        answers.append(client.post("/score", json=body, headers=bearer(ADMIN)).json())   # encoded
        answers.append(client.post("/score", json=body, headers=bearer(ADMIN)).json())   # the LRU
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:      # the disk cache
        answers.append(client.post("/score", json=body, headers=bearer(ADMIN)).json())
        features = client.get("/stats").json()["features"]
        assert features["from_disk_cache"] == 3 and features["encoded"] == 0
    for answer in answers:
        assert [s["reward"] for s in answer["scores"]] == today


def test_a_failing_disk_cache_write_fails_no_request(tmp_path, scorer, monkeypatch, caplog):
    from micro_rm.features import index
    from micro_rm.serve.app import create_app

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    body = {"prompt": PROMPT, "responses": [GOOD, BAD]}
    settings = make_settings(tmp_path)
    today = today_rewards(tmp_path, scorer, settings, PROMPT, [GOOD, BAD])
    monkeypatch.setattr(index, "write_shard", disk_full)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        first = client.post("/score", json=body, headers=bearer(ADMIN))
        other = client.post("/get_reward", json={"query": [PROMPT + " Something new."], "prompts": [PROMPT]},
                            headers=bearer(ADMIN))
        assert first.status_code == 200 and other.status_code == 200
        assert [s["reward"] for s in first.json()["scores"]] == today
        client.app.state.batcher.features.close()            # wait for the writer thread
        features = client.get("/stats").json()["features"]
        assert features["disk_cache_write_failures"] == features["encoded"] > 0
        assert features["disk_cache_written"] == 0
    assert any("No space left on device" in r.getMessage() for r in caplog.records)


def test_metrics_count_requests_and_latencies(service):
    client, _ = service
    for _ in range(3):
        client.post("/score", json={"prompt": PROMPT, "responses": [GOOD]}, headers=bearer(ADMIN))
    client.post("/score", json={"prompt": PROMPT, "responses": [GOOD]})
    score = client.get("/stats").json()["requests"]["POST /score"]
    assert score["count"] == 4 and score["by_status"] == {"200": 3, "401": 1}
    assert 0 < score["latency_ms"]["p50"] <= score["latency_ms"]["p99"]
    # the same numbers in Prometheus's text format, as prometheus-client parses it
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    assert samples[("micro_rm_requests_total", (("route", "POST /score"), ("status", "200")))] == 3
    assert samples[("micro_rm_requests_total", (("route", "POST /score"), ("status", "401")))] == 1
    assert samples[("micro_rm_request_duration_seconds_count", (("route", "POST /score"),))] == 4
    assert samples[("micro_rm_features_encoded_total", ())] == 2
    assert samples[("micro_rm_feedback_pairs_total", ())] == 0


# ----- concurrent feedback loses no update -----------------------------------------------------
FEEDBACK = [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD},
            {"prompt": PROMPT, "chosen": BAD, "rejected": GOOD},
            {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "No."}]


def _send_feedback(client, worker: int, steps: int) -> None:
    for step in range(steps):
        pairs = [{**FEEDBACK[(worker + step + j) % 3], "user_id": f"u{(worker + step + j) % 2}"}
                 for j in range(1 + step % 2)]
        response = client.post("/feedback", json=pairs, headers=bearer(ADMIN))
        assert response.status_code == 200, response.text


def _expected_states(scorer, workers: list[int], steps: int) -> dict[str, tuple[int, np.ndarray]]:
    b = scorer.backbone
    loss = [pair_losses(scorer.model.head_probs(encode([b.reward_item(f["prompt"], f["chosen"])]),
                                                encode([b.reward_item(f["prompt"], f["rejected"])])))[0]
            for f in FEEDBACK]
    out = {"u0": [0, np.zeros(K)], "u1": [0, np.zeros(K)]}
    for worker in workers:
        for step in range(steps):
            for j in range(1 + step % 2):
                user = out[f"u{(worker + step + j) % 2}"]
                user[0] += 1
                user[1] = user[1] + loss[(worker + step + j) % 3]
    return out


def _assert_states(store, expected) -> None:
    for user, (count, total) in expected.items():
        state = store.get(user)
        assert state.num_feedback == count and store.feedback_count(user) == count
        np.testing.assert_allclose(state.cumulative_loss, total, rtol=0, atol=1e-9)


def test_concurrent_feedback_from_threads_loses_no_update(service, scorer):
    client, _ = service
    workers, steps = list(range(8)), 15
    threads = [threading.Thread(target=_send_feedback, args=(client, w, steps)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_states(client.app.state.store, _expected_states(scorer, workers, steps))


def feedback_worker(state: str, cache: str, worker: int, steps: int, go: str) -> None:
    """Child process: its own service (a replica) on the shared state, sending feedback."""
    from micro_rm.serve.app import create_app
    from micro_rm.serve.settings import ServeSettings

    settings = ServeSettings(model="unused", state=state, admin_token=ADMIN, cache_dir=cache)
    with TestClient(create_app(settings, scorer=build_scorer())) as client:
        Path(f"{go}.ready{worker}").touch()
        while not Path(go).exists():
            time.sleep(0.005)
        _send_feedback(client, worker, steps)


def test_concurrent_feedback_from_processes_loses_no_update(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path)
    go, workers, steps = str(tmp_path / "go"), [1, 2], 15
    with TestClient(create_app(settings, scorer=scorer)) as client:     # creates the store first
        code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_serve as t; "
                f"t.feedback_worker({settings.state!r}, {settings.cache_dir!r}, int(sys.argv[1]), {steps}, {go!r})")
        children = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in workers]
        deadline = time.time() + 120
        while not all(Path(f"{go}.ready{w}").exists() for w in workers):
            assert time.time() < deadline and all(c.poll() is None for c in children), "a worker failed to start"
            time.sleep(0.05)
        Path(go).touch()
        _send_feedback(client, 0, steps)                                  # and this process too
        assert [c.wait(timeout=120) for c in children] == [0] * len(children)
        _assert_states(client.app.state.store, _expected_states(scorer, [0, *workers], steps))


# ----- fuzzing: no request body yields a 500 ---------------------------------------------------
def _bodies():
    from hypothesis import strategies as st

    text = st.text(max_size=30)
    message = st.fixed_dictionaries({"role": text, "content": text})
    texty = st.one_of(text, st.lists(message, max_size=3), st.integers(), st.none(), st.booleans(),
                      st.floats(allow_nan=True), st.lists(text, max_size=3))
    keys = st.sampled_from(["prompt", "responses", "context", "user_id", "a", "b", "query", "prompts",
                            "separator", "chosen", "rejected", "labels", "extra"])
    obj = st.dictionaries(keys, st.one_of(texty, st.lists(texty, max_size=4)), max_size=6)
    return st.one_of(obj, st.lists(obj, max_size=3), texty)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, scorer):
    from micro_rm.serve.app import create_app
    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("fuzz")), scorer=scorer)) as client:
        yield client


@pytest.mark.parametrize("path", ["/score", "/compare", "/get_reward", "/feedback", "/users"])
def test_fuzzed_bodies_never_yield_a_500(fuzz_client, path):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=int(os.environ.get("MICRO_RM_FUZZ_EXAMPLES", 40)), deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=_bodies())
    def check(body):
        payload = json.dumps(body, allow_nan=True)
        response = fuzz_client.post(path, content=payload, headers={**bearer(ADMIN), "Content-Type": "application/json"})
        assert response.status_code < 500, (payload, response.text)

    check()


# ----- state engines and the command line ------------------------------------------------------
def test_feedback_and_tokens_on_postgresql(tmp_path, scorer, postgres_url):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path, state=postgres_url)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        user = f"pg{os.getpid()}"
        token = new_user(client, user)
        threads = [threading.Thread(target=lambda: [client.post("/feedback", json=FEEDBACK[0], headers=token)
                                                    for _ in range(10)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.get(f"/users/{user}", headers=token).json()["num_feedback"] == 40
        assert client.delete(f"/users/{user}", headers=bearer(ADMIN)).json()["deleted_feedback"] == 40


def test_serve_command_binds_loopback_and_reports_bad_input(tmp_path, monkeypatch, capsys):
    import uvicorn

    from micro_rm.cli.app import main

    model_dir = tmp_path / "model"
    build_model().save_pretrained(model_dir)
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("MICRO_RM_ADMIN_TOKEN", ADMIN)
    assert main(["serve", "--model", str(model_dir), "--state", f"sqlite:///{tmp_path / 's.db'}"]) == 0
    app, kw = calls[0]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8000 and app.state.settings.admin_token == ADMIN
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    (tmp_path / "empty").write_text("")
    assert main(["serve", "--model", str(model_dir), "--admin-token-file", str(tmp_path / "empty")]) == 2
    assert "the file is empty" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--eta", "0"]) == 2
    assert main(["serve", "--model", str(model_dir), "--body-timeout-s", "0"]) == 2
    assert "--body-timeout-s must be a finite number in (0, 3600], got 0.0" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--state", f"sqlite:///{tmp_path / 's.db'}",
                 "--body-timeout-s", "2.5"]) == 0
    assert calls[-1][0].state.settings.body_timeout_s == 2.5


def test_group_commit_gives_the_states_of_one_by_one_updates(tmp_path):
    from micro_rm.online import FeedbackRequest, open_store

    rng = np.random.default_rng(0)
    batches = [(f"u{i % 3}", rng.uniform(size=(1 + i % 2, K)), [{"i": i}] * (1 + i % 2)) for i in range(7)]
    grouped = open_store(tmp_path / "grouped.db", "m", K)
    single = open_store(tmp_path / "single.db", "m", K)
    states = grouped.apply_requests([FeedbackRequest(batches)])[0]
    for (user, losses, payloads), state in zip(batches, states):
        want = single.apply_feedback(user, losses, payloads)
        assert state.num_feedback == want.num_feedback
        np.testing.assert_array_equal(state.cumulative_loss, want.cumulative_loss)
    for user in single.list_users():
        assert grouped.feedback_count(user) == single.feedback_count(user)
        np.testing.assert_array_equal(grouped.get(user).cumulative_loss, single.get(user).cumulative_loss)


# ----- per-request isolation and limits on every path (issue 25, item 1) -----------------------
def _concurrently(calls):
    """Run the zero-argument ``calls`` in threads at once; their results in order."""
    results = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        results[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_lone_surrogate_fails_alone_and_concurrent_requests_all_succeed(tmp_path, scorer):
    """A prompt holding "\\ud800" used to give a 500 and poison the shared encode batch."""
    from micro_rm.serve.app import create_app

    bodies = [{"prompt": f"prompt {i}", "responses": [f"answer {i}", f"reply {i}"]} for i in range(16)]
    bad = b'{"query": ["Hi\\ud800 there"], "prompts": ["Hi\\ud800"]}'
    with TestClient(create_app(make_settings(tmp_path, batch_wait_ms=100.0), scorer=scorer)) as client:
        calls = [lambda b=b: client.post("/score", json=b, headers=bearer(ADMIN)) for b in bodies]
        calls.insert(5, lambda: client.post("/get_reward", content=bad,
                                            headers={**bearer(ADMIN), "Content-Type": "application/json"}))
        results = _concurrently(calls)
        refused = results.pop(5)
        assert refused.status_code == 422 and "`query[0]` is not valid Unicode" in refused.json()["detail"]
        assert [r.status_code for r in results] == [200] * len(bodies)
        for body, response in zip(bodies, results):
            alone = client.post("/score", json=body, headers=bearer(ADMIN)).json()
            assert [s["reward"] for s in response.json()["scores"]] == [s["reward"] for s in alone["scores"]]


class _PoisonedBackbone:
    """The static backbone, but encoding any batch holding "POISON" fails (a fault no check sees)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, items):
        if any("POISON" in str(item) for item in items):
            raise RuntimeError("backbone failure")
        return self._inner.encode(items)


def test_a_failed_shared_encode_fails_only_the_request_that_causes_it(tmp_path):
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.app import create_app

    poisoned = RewardScorer(build_model(), _PoisonedBackbone(static_backbone()))
    settings = make_settings(tmp_path, batch_wait_ms=200.0, disk_cache=False)
    bodies = [{"prompt": f"prompt {i}", "responses": [f"answer {i}"]} for i in range(8)]
    bodies.append({"prompt": "POISON", "responses": ["x"]})
    with TestClient(create_app(settings, scorer=poisoned), raise_server_exceptions=False) as client:
        results = _concurrently([lambda b=b: client.post("/score", json=b, headers=bearer(ADMIN)) for b in bodies])
        assert [r.status_code for r in results] == [200] * 8 + [503]
        assert "the backbone failed on this request's texts (RuntimeError: backbone failure)" \
            in results[-1].json()["detail"]
        assert client.get("/stats").json()["features"]["retried_alone"] >= 2   # it did share a batch


def test_an_oversized_prompt_is_refused_on_every_path(tmp_path, scorer, capsys):
    """The limit on text length (ScoringLimits.max_text_chars) holds for /get_reward, /score,
    `micro-rm score` and the TRL / OpenRLHF / verl adapters, before anything is encoded."""
    from micro_rm.cli.app import main
    from micro_rm.errors import MicroRMError
    from micro_rm.integrations.openrlhf import make_reward_func
    from micro_rm.integrations.trl import MicroRMRewardFunction
    from micro_rm.scoring.limits import RequestRefused, ScoringLimits, TooManyTexts
    from micro_rm.serve.app import create_app

    long = "x" * 101
    with TestClient(create_app(make_settings(tmp_path, max_text_chars=100), scorer=scorer)) as client:
        out = client.post("/get_reward", json={"query": [long + GOOD], "prompts": [long]}, headers=bearer(ADMIN))
        assert out.status_code == 422 and out.json()["detail"] == \
            f"`query[0]` has {101 + len(GOOD)} characters; the limit is 100 (--max-text-chars)"
        out = client.post("/get_reward", json={"query": ["Hi"], "prompts": [long]}, headers=bearer(ADMIN))
        assert out.status_code == 422 and "`prompts[0]` has 101 characters" in out.json()["detail"]
        out = client.post("/score", json={"prompt": long, "responses": [GOOD]}, headers=bearer(ADMIN))
        assert out.status_code == 422 and "`prompt` has 101 characters" in out.json()["detail"]
        out = client.post("/get_reward", json={"query": ["Hi"] * 3, "prompts": ["Hi"] * 3,
                                               "labels": ["", "", "x" * 101]}, headers=bearer(ADMIN))
        assert out.status_code == 200      # --labels ignore: labels carry nothing
        assert client.get("/stats").json()["features"]["encoded"] == 2
    with TestClient(create_app(make_settings(tmp_path, max_text_chars=100, labels="json", anonymous_scoring=True),
                               scorer=scorer)) as client:
        for label, field in (("x" * 101, "`labels[0]` has 101"), ({"context": long}, "`labels[0].context` has 101"),
                             ({"user_id": "not an id!"}, "labels[0].user_id 'not an id!' is not a valid user id")):
            out = client.post("/get_reward", json={"query": ["Hi"], "prompts": ["Hi"], "labels": [label]})
            assert out.status_code == 422 and field in out.json()["detail"], out.text
    huge = "x" * (ScoringLimits().max_text_chars + 1)
    build_model().save_pretrained(tmp_path / "model")
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": PROMPT, "responses": [GOOD, huge]}) + "\n")
    capsys.readouterr()
    assert main(["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 1: `responses[1]` has 100001 characters" in err
    assert not (tmp_path / "out.jsonl").exists()
    reward = MicroRMRewardFunction(scorer, disk_cache=False)
    with pytest.raises(RequestRefused, match=r"`prompts\[0\]` has 100001 characters; the limit is 100000 "
                                             r"\(ScoringLimits.max_text_chars\)"):
        reward([huge], [GOOD])
    with pytest.raises(MicroRMError, match=r"`completions\[1\]` is not valid Unicode"):
        reward([PROMPT] * 2, [GOOD, "\ud800"])
    with pytest.raises(MicroRMError, match=r"`prompts\[0\]` has 100001 characters"):
        make_reward_func(reward, labels="ignore")(["Hi"], [huge], None)
    with pytest.raises(TooManyTexts, match=r"3 texts in one request; the limit is 2 \(ScoringLimits.max_batch\)"):
        MicroRMRewardFunction(scorer, disk_cache=False, limits=ScoringLimits(max_batch=2))([PROMPT] * 3, [GOOD] * 3)
    assert reward.features.stats["encoded"] == 0


def test_verl_refuses_an_oversized_prompt(tmp_path, monkeypatch):
    from micro_rm.errors import MicroRMError
    from micro_rm.integrations import common
    from micro_rm.integrations.verl import compute_score

    build_model().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(common, "_loaded", {})
    with pytest.raises(MicroRMError, match=r"`prompts\[0\]` has 100001 characters"):
        compute_score("dsp", GOOD, None, {"prompt": "x" * 100_001}, model=str(tmp_path / "model"))
