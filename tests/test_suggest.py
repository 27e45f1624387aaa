"""``suggest``: which pairs a user should label next, the same ranking through the library, the
service (``POST /users/{id}/queries``) and the CLI (``micro-rm suggest``); each bad pool refused
with its field; and the labelling loop (suggest → label → /feedback → suggest) finding a
synthetic user's head in fewer labels than random picks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from micro_rm.errors import MicroRMError
from micro_rm.online.hedge import DEFAULT_ETA
from micro_rm.scoring.limits import RequestRefused, ScoringLimits, TooManyTexts
from micro_rm.scoring.suggest import Query, check_pool, suggest
from test_serve import ADMIN, bearer, make_settings, new_user, static_backbone

K = 4
WORDS = ("entropy heat light sound river stone cloud music paper garden clock market bridge star "
         "forest engine window silver honey winter").split()


def pool_pairs(n: int, seed: int) -> list[dict]:
    """``n`` candidate pairs of short random sentences on three prompts."""
    rng = np.random.default_rng(seed)
    sentence = lambda: " ".join(rng.choice(WORDS, size=6))  # noqa: E731
    return [{"prompt": f"Tell me about topic {i % 3}.", "chosen": sentence(), "rejected": sentence()}
            for i in range(n)]


def mixture(seed: int, pairs: list[dict]):
    """K heads that agree on most pairs (a shared direction plus a little of their own), so a
    random pair rarely tells them apart, and a uniform router (the prior of a new user)."""
    from micro_rm.model import MixtureConfig, MixtureRewardModel
    from micro_rm.scoring.engine import RewardScorer

    backbone = static_backbone()
    torch.manual_seed(seed)
    model = MixtureRewardModel(MixtureConfig(num_heads=K, reward_dim=backbone.dim, route_dim=backbone.dim,
                                             backbone=backbone.fingerprint(),
                                             feature={"router_input": "context", "context_in_reward": False}))
    rng = np.random.default_rng(seed)
    diffs = np.stack([backbone.encode([backbone.reward_item(p["prompt"], p["chosen"])])[0]
                      - backbone.encode([backbone.reward_item(p["prompt"], p["rejected"])])[0] for p in pairs])
    base = rng.standard_normal(backbone.dim)
    heads = base + 0.6 * np.linalg.norm(base) * rng.standard_normal((K, backbone.dim)) / math.sqrt(backbone.dim)
    heads *= 3.0 / np.std(diffs @ heads.T)                     # margins of a few nats
    with torch.no_grad():
        model.heads.weight.copy_(torch.from_numpy(heads.astype(np.float32)))
        model.router[-1].weight.zero_()
        model.router[-1].bias.zero_()
    return RewardScorer(model.eval(), backbone)


@pytest.fixture(scope="module")
def scorer():
    return mixture(0, pool_pairs(48, 0))


# ----- the pool's checks -----------------------------------------------------------------------
GOOD = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}


def test_check_pool_names_the_field_of_each_bad_pool():
    limits = ScoringLimits(max_texts=3, max_text_chars=50)
    with pytest.raises(RequestRefused, match="`pairs` is empty"):
        check_pool([], 1, limits)
    with pytest.raises(TooManyTexts, match=r"`pairs` has 4 candidate pairs; the limit is 3 \(ScoringLimits.max_text"):
        check_pool([GOOD] * 4, 1, limits)
    with pytest.raises(RequestRefused, match=r"pairs\[1\]: missing field `chosen`$"):
        check_pool([GOOD, {"prompt": "Hi", "rejected": "x"}], 1, limits)
    with pytest.raises(RequestRefused, match=r"`pairs\[0\].rejected` has 60 characters; the limit is 50"):
        check_pool([{**GOOD, "rejected": "x" * 60}], 1, limits)
    with pytest.raises(RequestRefused, match=r"pairs\[0\]: a candidate must be an object"):
        check_pool(["Hi"], 1, limits)
    with pytest.raises(RequestRefused, match="`k` must be an integer ≥ 1"):
        check_pool([GOOD], 0, limits)
    assert check_pool([GOOD, GOOD], 5, limits)[1] == 2          # k past the pool: the whole pool


# ----- one ranking, three routes ---------------------------------------------------------------
def hand_ranking(scorer, pairs, loss=None):
    """The expected information gain of each pair, from the heads and router directly."""
    from micro_rm.train.active import expected_information_gain

    b = scorer.backbone
    a = b.encode([b.reward_item(p["prompt"], p["chosen"]) for p in pairs]).astype(np.float16).astype(np.float32)
    c = b.encode([b.reward_item(p["prompt"], p["rejected"]) for p in pairs]).astype(np.float16).astype(np.float32)
    probs = scorer.model.head_probs(a, c).astype(np.float64)
    w = np.full(K, 1 / K) if loss is None else np.exp(-DEFAULT_ETA * (loss - loss.min()))
    gains = expected_information_gain(w / w.sum(), probs)
    return np.argsort(-gains, kind="stable"), gains


def test_suggest_ranks_by_expected_information_gain_and_ignores_the_pair_order(scorer):
    pairs = pool_pairs(48, 0)
    order, gains = hand_ranking(scorer, pairs)
    found = suggest(scorer, pairs, 5)
    assert [q.index for q in found] == order[:5].tolist()
    np.testing.assert_allclose([q.gain for q in found], gains[order[:5]], rtol=1e-5)
    assert found[0].gain >= found[-1].gain > 0
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    assert [q.index for q in suggest(scorer, swapped, 5)] == [q.index for q in found]


def test_a_users_feedback_moves_the_ranking(scorer, tmp_path):
    from micro_rm.online import open_store, pair_losses

    pairs = pool_pairs(48, 0)
    probs = hand_ranking(scorer, pairs)
    store = open_store(tmp_path / "state.db", scorer.model_id, K)
    fb = scorer.model.head_probs(*[scorer.backbone.encode([scorer.backbone.reward_item(p["prompt"], p[s])
                                                            for p in pairs[:6]]) for s in ("chosen", "rejected")])
    loss = store.apply_feedback("ana", pair_losses(fb)).cumulative_loss
    store.close()
    order, _ = hand_ranking(scorer, pairs, loss)
    found = suggest(scorer, pairs, 3, user="ana", state=tmp_path / "state.db")
    assert [q.index for q in found] == order[:3].tolist() != probs[0][:3].tolist()
    assert suggest(scorer, pairs, 3, user="bob", state=tmp_path / "state.db") == suggest(scorer, pairs, 3)


def test_the_service_answers_what_the_library_ranks_with_the_feedback_auth(tmp_path, scorer):
    from micro_rm.serve.app import create_app

    pairs = pool_pairs(48, 0)
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:
        ana = new_user(client, "ana")
        new_user(client, "bob")
        body = {"pairs": pairs, "k": 4}
        answer = client.post("/users/ana/queries", json=body, headers=ana)
        assert answer.status_code == 200, answer.text
        assert answer.json()["queries"] == [{"index": q.index, "gain": pytest.approx(q.gain, rel=1e-6)}
                                            for q in suggest(scorer, pairs, 4)]
        assert answer.json()["num_feedback"] == 0
        assert client.post("/users/newbie/queries", json=body, headers=bearer(ADMIN)).status_code == 200
        assert client.post("/users/bob/queries", json=body, headers=ana).status_code == 403
        assert client.post("/users/ana/queries", json=body).status_code == 401
        # the order of the keys in the JSON body and of the two responses means nothing
        swapped = {"k": 4, "pairs": [{"rejected": p["chosen"], "chosen": p["rejected"], "prompt": p["prompt"]}
                                     for p in pairs]}
        again = client.post("/users/ana/queries", json=swapped, headers=ana).json()["queries"]
        assert [q["index"] for q in again] == [q["index"] for q in answer.json()["queries"]]
        assert [q["gain"] for q in again] == pytest.approx([q["gain"] for q in answer.json()["queries"]], rel=1e-6)


@pytest.mark.parametrize("body, status, message", [
    ({"pairs": [], "k": 1}, 422, "`pairs` is empty"),
    ({"pairs": [GOOD] * 4, "k": 1}, 413, r"`pairs` has 4 candidate pairs; the limit is 3 \(--max-texts\)"),
    ({"pairs": [GOOD, {"prompt": "Hi", "chosen": "Hello!"}], "k": 1}, 422, r"body.pairs.1.rejected: Field required"),
    ({"pairs": [GOOD, {**GOOD, "chosen": "Go away."}], "k": 1}, 422, r"pairs\[1\]: `chosen` and `rejected` are"),
    ({"pairs": [{**GOOD, "chosen": "x" * 60}], "k": 1}, 422, r"`pairs\[0\].chosen` has 60 characters"),
    ({"pairs": [GOOD], "k": 0}, 422, "`k` must be an integer ≥ 1"),
    ({"pairs": [{**GOOD, "score": 1}], "k": 1}, 422, r"body.pairs.0.score: Extra inputs are not permitted"),
])
def test_the_service_refuses_a_bad_pool_naming_the_field(tmp_path, scorer, body, status, message):
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path, max_texts=3, max_text_chars=50)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        answer = client.post("/users/ana/queries", json=body, headers=bearer(ADMIN))
    assert answer.status_code == status
    found = answer.json()
    assert found.get("message") or found["detail"]
    import re
    assert re.search(message, found.get("message") or found["detail"]), found


def test_the_cli_writes_the_ranking_and_creates_no_state(tmp_path, scorer, capsys):
    from micro_rm.cli import main

    scorer.model.save_pretrained(tmp_path / "model")
    pairs = pool_pairs(48, 0)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    state = tmp_path / "not-yet" / "state.db"
    argv = ["suggest", "--model", str(tmp_path / "model"), "--user", "ana", "--state", str(state),
            "--data", str(tmp_path / "pool.jsonl"), "--k", "3", "--out", str(tmp_path / "ask.jsonl"), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = [json.loads(line) for line in (tmp_path / "ask.jsonl").read_text().splitlines()]
    expected = suggest(scorer, pairs, 3)
    assert [row["index"] for row in written] == [q.index for q in expected]
    assert written == printed["queries"]
    assert written[0]["chosen"] == pairs[expected[0].index]["chosen"]
    assert [row["gain"] for row in written] == pytest.approx([q.gain for q in expected], rel=1e-6)
    assert not state.exists() and not state.parent.exists()
    assert main(argv[:-5] + ["--k", "0"]) == 2
    assert "`k` must be an integer ≥ 1" in capsys.readouterr().err


def test_micro_api_suggest_is_the_same_ranking(scorer):
    from micro_rm import MiCRo

    rm = MiCRo(heads=K, backbone="static")
    rm._set_model(scorer.model)
    pairs = pool_pairs(48, 0)
    assert rm.suggest("ana", pairs, 3) == suggest(scorer, pairs, 3)
    assert all(isinstance(q, Query) for q in rm.suggest(None, pairs, 3))
    with pytest.raises(MicroRMError, match="`pairs` is empty"):
        rm.suggest("ana", [], 3)


# ----- the labelling loop ----------------------------------------------------------------------
def labels_to_identify(client, scorer, pairs, user: str, head: int, active: bool, seed: int,
                       rounds: int = 16, sure: float = 0.9) -> int:
    """Rounds of suggest → the user labels (by their own head) → /feedback until the user's
    weights put ``sure`` on ``head``; random picks from the same pool when not ``active``."""
    headers = new_user(client, user)
    b = scorer.backbone
    margin = (scorer.model.rewards(b.encode([b.reward_item(p["prompt"], p["chosen"]) for p in pairs]))
              - scorer.model.rewards(b.encode([b.reward_item(p["prompt"], p["rejected"]) for p in pairs])))[:, head]
    random_order = np.random.default_rng(seed).permutation(len(pairs)).tolist()
    asked: set[int] = set()
    for n in range(1, rounds + 1):
        if active:
            left = [i for i in range(len(pairs)) if i not in asked]
            answer = client.post(f"/users/{user}/queries", json={"pairs": [pairs[i] for i in left], "k": 1},
                                 headers=headers)
            assert answer.status_code == 200, answer.text
            pick = left[answer.json()["queries"][0]["index"]]
        else:
            pick = random_order[n - 1]
        asked.add(pick)
        p = pairs[pick]
        chosen, rejected = (p["chosen"], p["rejected"]) if margin[pick] > 0 else (p["rejected"], p["chosen"])
        state = client.post("/feedback", json={"prompt": p["prompt"], "chosen": chosen, "rejected": rejected},
                            headers=headers)
        assert state.status_code == 200, state.text
        if state.json()["users"][0]["feedback_weights"][head] >= sure:
            return n
    return rounds + 1


def test_the_labelling_loop_finds_a_users_head_in_fewer_labels_than_random_picks(tmp_path):
    from micro_rm.serve.app import create_app

    active, random = [], []
    for seed in range(6):
        pairs = pool_pairs(48, seed)
        scorer = mixture(seed, pairs)
        head = seed % K
        with TestClient(create_app(make_settings(tmp_path / str(seed)), scorer=scorer)) as client:
            active.append(labels_to_identify(client, scorer, pairs, "active", head, True, seed))
            random.append(labels_to_identify(client, scorer, pairs, "random", head, False, seed))
    active, random = np.array(active), np.array(random)
    assert (active <= random).sum() >= 5, (active, random)       # paired over seeds
    assert active.mean() < 0.75 * random.mean(), (active, random)
