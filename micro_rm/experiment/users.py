"""New users online: accuracy against the number of feedback pairs (the learning curve).

Each attribute is one simulated user. The chosen stage-1 model is shared; a user starts from
nothing (``UserState.fresh``) and gives n labelled pairs drawn from their attribute's train pairs,
either at random or proposed one at a time by active selection
(:func:`micro_rm.train.active.rank_queries`, expected information gain). Their weights are the
router's prior sharpened by Hedge, w = normalise(f_ψ(x, c) ⊙ exp(−η S_u)); accuracy is measured on
their attribute's test pairs. Two kinds of users:

- ``no context``: known only by ``user_id``; the prior is the router on the prompt with no context
  (what stage 1's context dropout trains for);
- ``context``: the user also states their context (the attribute's training sentence).

Mean ± std over draws of the feedback (seeds).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

N_FEEDBACK = (0, 1, 2, 5, 10, 20, 50)


def user_accuracy(log_prior: np.ndarray, head_probs: np.ndarray, cumulative_loss: np.ndarray,
                  eta: float) -> float:
    """Accuracy on pairs [n] of the routed mixture with weights normalise(prior ⊙ exp(−η S))."""
    from micro_rm.online.hedge import routed_probabilities

    return float((routed_probabilities(log_prior, head_probs, cumulative_loss, eta) > 0.5).mean())


def feedback_order(pool_probs: np.ndarray, pool_log_prior: np.ndarray, n: int, eta: float,
                   rng: np.random.Generator, active: bool) -> list[int]:
    """Indices of the first ``n`` pool pairs a user labels: random, or chosen one at a time by
    expected information gain under the user's current weights (the label of a pair is revealed
    only after it is chosen; the score is symmetric in the pair's orientation)."""
    from micro_rm.online.hedge import hedge_log_weights, pair_losses
    from micro_rm.train.active import rank_queries

    if not active:
        return rng.choice(len(pool_probs), size=min(n, len(pool_probs)), replace=False).tolist()
    candidates = rng.choice(len(pool_probs), size=min(len(pool_probs), 500), replace=False)
    asked: list[int] = []
    loss = np.zeros(pool_probs.shape[1])
    for _ in range(min(n, len(candidates))):
        left = np.setdiff1d(candidates, asked, assume_unique=True)
        weights = np.exp(hedge_log_weights(pool_log_prior[left], loss, eta))
        pick = int(left[rank_queries(pool_probs[left], weights, eta=eta)[0]])
        asked.append(pick)
        loss = loss + pair_losses(pool_probs[pick:pick + 1])[0]
    return asked


def learning_curve(model: Any, pool: dict[str, Any], test: dict[str, Any], *, eta: float, seeds: int,
                   seed: int = 0, oracle: Optional[float] = None,
                   n_feedback: tuple[int, ...] = N_FEEDBACK) -> dict[str, Any]:
    """``pool`` / ``test``: {"no context" | "context": PairFeatures} of the train / test split
    (the same pairs with and without the context in the route). Returns, per kind of user and
    per selection (random, active), the mean accuracy over users at each n, mean and std over
    seeds."""
    from micro_rm.online.hedge import pair_losses

    kinds = {}
    users = sorted({a for a in test["context"].attributes if a is not None})
    for kind in ("no context", "context"):
        pool_f, test_f = pool[kind], test[kind]
        pool_probs = model.head_probs(pool_f.chosen, pool_f.rejected).astype(np.float64)
        test_probs = model.head_probs(test_f.chosen, test_f.rejected).astype(np.float64)
        pool_prior = np.log(np.clip(model.router_weights(pool_f.route), 1e-30, 1.0)).astype(np.float64)
        test_prior = np.log(np.clip(model.router_weights(test_f.route), 1e-30, 1.0)).astype(np.float64)
        pool_attr, test_attr = np.array(pool_f.attributes, dtype=object), np.array(test_f.attributes, dtype=object)
        for selection in ("random", "active"):
            curve = np.zeros((seeds, len(n_feedback)))
            for s in range(seeds):
                rng = np.random.default_rng([seed, s])
                per_user = np.zeros((len(users), len(n_feedback)))
                for u, user in enumerate(users):
                    rows, mine = np.flatnonzero(pool_attr == user), np.flatnonzero(test_attr == user)
                    order = rows[feedback_order(pool_probs[rows], pool_prior[rows], max(n_feedback), eta,
                                                rng, selection == "active")]
                    losses = pair_losses(pool_probs[order])                          # [n_max, K]
                    for j, n in enumerate(n_feedback):
                        per_user[u, j] = user_accuracy(test_prior[mine], test_probs[mine],
                                                       losses[:n].sum(axis=0), eta)
                curve[s] = per_user.mean(axis=0)
            kinds[f"{kind} / {selection}"] = {"mean": curve.mean(axis=0).tolist(),
                                              "std": curve.std(axis=0, ddof=1).tolist() if seeds > 1
                                              else [0.0] * len(n_feedback)}
    return {"n": list(n_feedback), "curves": kinds, "eta": eta, "seeds": seeds, "users": users,
            "oracle": oracle}
