"""Users online, on the chosen stage-1 model: per-user Hedge for the pairs' own users, and new
users' learning curve. A user's weights are the router's prior sharpened by Hedge,
w = normalise(f_ψ(x, c) ⊙ exp(−η S_u)); a ``no context`` user, known only by ``user_id``, has the
router on the prompt alone as prior (docs/personalization.md, "New users, online").
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from micro_rm.experiment.state import Run
from micro_rm.online.hedge import DEFAULT_ETA, UserState, pair_losses, routed_probabilities
from micro_rm.train.active import best_queries

N_FEEDBACK = (0, 1, 2, 5, 10, 20, 50)


def feedback_order(pool_probs: np.ndarray, pool_log_prior: np.ndarray, n: int, eta: float,
                   rng: np.random.Generator, active: bool) -> list[int]:
    """Indices of the first ``n`` pool pairs a user labels: random, or the loop a labelling tool
    runs with the product's ranking (:func:`micro_rm.train.active.best_queries`, as ``micro-rm
    suggest`` uses): ask for the best pair under the user's current weights, reveal its label, add
    its losses, ask again (the score is symmetric in the pair's orientation)."""
    if not active:
        return rng.choice(len(pool_probs), size=min(n, len(pool_probs)), replace=False).tolist()
    candidates = rng.choice(len(pool_probs), size=min(len(pool_probs), 500), replace=False)
    asked: list[int] = []
    loss = np.zeros(pool_probs.shape[1])
    for _ in range(min(n, len(candidates))):
        left = np.setdiff1d(candidates, asked, assume_unique=True)
        pick = int(left[best_queries(pool_probs[left], pool_log_prior[left], loss, 1, eta=eta)[0][0]])
        asked.append(pick)
        loss = loss + pair_losses(pool_probs[pick:pick + 1])[0]
    return asked


def learning_curve(model: Any, pool: dict[str, Any], test: dict[str, Any], *, eta: float, seeds: int,
                   seed: int = 0, oracle: Optional[float] = None) -> dict[str, Any]:
    """Per kind of user and selection (random, active), the mean accuracy over users after each n
    of ``N_FEEDBACK`` pairs, mean and std over seeds. ``pool`` / ``test``: {"no context" |
    "context": PairFeatures} of the train / test split."""
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
            curve = np.zeros((seeds, len(N_FEEDBACK)))
            for s in range(seeds):
                rng = np.random.default_rng([seed, s])
                per_user = np.zeros((len(users), len(N_FEEDBACK)))
                for u, user in enumerate(users):
                    rows, mine = np.flatnonzero(pool_attr == user), np.flatnonzero(test_attr == user)
                    order = rows[feedback_order(pool_probs[rows], pool_prior[rows], max(N_FEEDBACK), eta,
                                                rng, selection == "active")]
                    losses = pair_losses(pool_probs[order])                          # [n_max, K]
                    for j, n in enumerate(N_FEEDBACK):
                        probs = routed_probabilities(test_prior[mine], test_probs[mine], losses[:n].sum(axis=0), eta)
                        per_user[u, j] = float((probs > 0.5).mean())
                curve[s] = per_user.mean(axis=0)
            kinds[f"{kind} / {selection}"] = {"mean": curve.mean(axis=0).tolist(),
                                              "std": curve.std(axis=0, ddof=1).tolist() if seeds > 1
                                              else [0.0] * len(N_FEEDBACK)}
    return {"n": list(N_FEEDBACK), "curves": kinds, "eta": eta, "seeds": seeds, "users": users,
            "oracle": oracle}


def per_user_hedge(run: Run) -> None:
    """Step "users" (when ``users.enabled``): before / after feedback per user, and the weights
    each user's Hedge state settled on."""
    settings = run.config.users
    if not settings.enabled:
        return
    model, test = run.chosen["model"], run.test_feats[run.chosen["protocol"]]
    test_users = np.array([r.get("user_id") or "" for r in run.test], dtype=object)
    pool_users = np.array([r.get("user_id") or "" for r in run.pool], dtype=object)
    rows, rng = {}, np.random.default_rng(run.config.seed)
    for user in sorted(set(test_users) - {""}):
        candidates = np.flatnonzero(pool_users == user)
        feedback = rng.choice(candidates, size=min(settings.feedback, len(candidates)), replace=False)
        fb = run.pool_ctx.subset(feedback)        # only its reward features are read: any router input's
        state = UserState.fresh(user, model_id="experiment", num_heads=model.config.num_heads)
        state = state.update(model.head_probs(fb.chosen, fb.rejected))
        mine = test.subset(np.flatnonzero(test_users == user))
        heads = model.head_probs(mine.chosen, mine.rejected)                 # [n, K]
        prior = model.router_weights(mine.route)                             # [n, K]
        after = routed_probabilities(np.log(np.clip(prior, 1e-30, 1.0)), heads, state.cumulative_loss, settings.eta)
        before = (prior * heads).sum(axis=1)
        rows[user] = {"test_pairs": len(mine), "feedback_pairs": len(feedback),
                      "before": float((before > 0.5).mean()), "after": float((after > 0.5).mean()),
                      "head_weights": state.weights(np.zeros((1, model.config.num_heads)),
                                                    settings.eta)[0].round(4).tolist()}
    run.results["users"] = {"eta": settings.eta, "feedback": settings.feedback, "per_user": rows}


def new_users(run: Run) -> None:
    """Step "new users" (when ``user_curve.enabled``): :func:`learning_curve` of the chosen
    stage-1 model, each attribute one user, with and without their context."""
    curve = run.config.user_curve
    if not curve.enabled:
        return
    # The prompt-protocol features are reused when a stage-1 variant already built them.
    pool_prompt = None if run.cross else run.train_feats.get("prompt")
    pool = {"context": run.pool_ctx, "no context": pool_prompt or run.feats(run.pool, "prompt")}
    test = {"context": run.test_ctx, "no context": run.test_feats.get("prompt") or run.feats(run.test, "prompt")}
    result = learning_curve(run.chosen["model"], pool, test, eta=curve.eta or DEFAULT_ETA, seeds=curve.seeds,
                            seed=run.config.seed, oracle=run.methods.get("oracle", {}).get("mean"))
    run.results["user_curve"] = result
    run.log("new users (no context, random): " + ", ".join(
        f"n={n}: {m:.3f}" for n, m in zip(result["n"], result["curves"]["no context / random"]["mean"])))
