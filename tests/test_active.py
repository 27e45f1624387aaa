"""Active query selection: the two informativeness scores on literal pools, and a simulated user
who reaches a target accuracy with fewer labels than random selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from micro_rm.online import UserState, hedge_log_weights, pair_losses
from micro_rm.train.active import expected_information_gain, rank_queries, weighted_disagreement

POOL = np.array([[0.9, 0.9, 0.9],      # every head agrees: nothing to learn
                 [0.99, 0.01, 0.5],    # heads 0 and 1 disagree sharply
                 [0.6, 0.4, 0.5]])     # they disagree mildly


def test_disagreement_is_the_weighted_variance_of_the_head_probabilities():
    w = np.array([0.2, 0.3, 0.5])
    mean = POOL @ w
    brute = [sum(w[k] * (POOL[n, k] - mean[n]) ** 2 for k in range(3)) for n in range(3)]
    np.testing.assert_allclose(weighted_disagreement(w, POOL), brute, rtol=1e-12, atol=1e-15)


def test_information_gain_equals_the_brute_force_expected_entropy_drop():
    w, eta = np.array([0.2, 0.3, 0.5]), 1.5
    entropy = lambda v: -sum(x * math.log(x) for x in v if x > 0)  # noqa: E731
    for n in range(3):
        p = POOL[n]
        after_yes = np.exp(hedge_log_weights(np.log(w), pair_losses(p[None])[0], eta))
        after_no = np.exp(hedge_log_weights(np.log(w), pair_losses(1 - p[None])[0], eta))
        p_yes = w @ p
        brute = entropy(w) - p_yes * entropy(after_yes) - (1 - p_yes) * entropy(after_no)
        assert expected_information_gain(w, POOL[n:n + 1], eta=eta)[0] == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("method", ["information", "disagreement"])
def test_ranking_puts_sharp_disagreement_first_and_agreement_last(method):
    assert rank_queries(POOL, np.full(3, 1 / 3), method=method).tolist() == [1, 2, 0]


def test_a_user_who_dropped_a_head_is_no_longer_asked_about_it():
    pool = np.array([[0.99, 0.01, 0.01],   # only head 0 disagrees
                     [0.5, 0.9, 0.1]])     # heads 1 and 2 disagree
    uniform = np.log(np.full((1, 3), 1 / 3))
    fresh = UserState.fresh("ana", "m", 3)
    assert rank_queries(pool, state=fresh, log_prior=uniform).tolist() == [0, 1]
    settled = fresh.update(np.tile([[0.01, 0.99, 0.99]], (30, 1)))           # head 0 is out
    assert rank_queries(pool, state=settled, log_prior=uniform).tolist() == [1, 0]
    assert rank_queries(pool, state=settled, log_prior=uniform, method="disagreement").tolist() == [1, 0]


def test_bad_inputs_are_refused():
    with pytest.raises(MicroRMError, match="`method` must be one of information, disagreement"):
        rank_queries(POOL, np.full(3, 1 / 3), method="entropy")
    with pytest.raises(MicroRMError, match="exactly one of `weights` or `state`"):
        rank_queries(POOL)
    with pytest.raises(MicroRMError, match="`state` needs `log_prior`"):
        rank_queries(POOL, state=UserState.fresh("u", "m", 3))
    with pytest.raises(MicroRMError, match=r"`weights` must be \[K=3\] or \[N, K\] rows on the simplex"):
        rank_queries(POOL, np.array([0.5, 0.5]))
    with pytest.raises(MicroRMError, match="--eta"):
        expected_information_gain(np.full(3, 1 / 3), POOL, eta=0.0)


# ----- a simulated user --------------------------------------------------------------------------
K, D = 6, 10


def labels_needed(seed: int, method: str, target: float = 0.97, budget: int = 150) -> int:
    """Labels a user needs until their Hedge weights predict their own head on ≥ ``target`` of
    fresh pairs. The K heads share a base direction (they agree on most pairs, as real reward
    heads do), so a random pair rarely tells them apart."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(D)
    heads = 3.0 * base / np.linalg.norm(base) + 1.5 * rng.standard_normal((K, D)) / math.sqrt(D)
    pool = 1 / (1 + np.exp(-rng.standard_normal((1_000, D)) @ heads.T))           # [N, K]
    test = 1 / (1 + np.exp(-rng.standard_normal((2_000, D)) @ heads.T))
    true_head = seed % K
    labels = rng.random(len(pool)) < pool[:, true_head]                           # the user's answers
    observed = np.where(labels[:, None], pool, 1 - pool)
    state, prior = UserState.fresh("sim", "m", K), np.full((1, K), -math.log(K))
    left, order = np.ones(len(pool), dtype=bool), np.random.default_rng(seed + 100)
    for t in range(1, budget + 1):
        idx = np.flatnonzero(left)
        if method == "random":
            q = order.choice(idx)
        else:
            q = idx[rank_queries(pool[idx], state=state, log_prior=prior, method=method)[0]]
        left[q] = False
        state = state.update(observed[q:q + 1])
        w = state.weights(prior, eta=1.0)[0]
        if np.mean((test @ w > 0.5) == (test[:, true_head] > 0.5)) >= target:
            return t
    return budget + 1


def test_active_selection_needs_fewer_labels_than_random_selection():
    seeds = range(9)
    random = np.median([labels_needed(s, "random") for s in seeds])
    information = np.median([labels_needed(s, "information") for s in seeds])
    disagreement = np.median([labels_needed(s, "disagreement") for s in seeds])
    print({"random": random, "information": information, "disagreement": disagreement})
    assert information <= random / 3 and disagreement <= random / 3            # measured: 11, 9 vs 61
