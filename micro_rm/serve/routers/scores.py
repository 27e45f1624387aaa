"""``POST /score``, ``POST /compare`` and the OpenRLHF-compatible ``POST /get_reward``.

The router and heads (small torch calls) run on the event loop: a thread of their own measured
slower (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from micro_rm.integrations.openrlhf import head_logs, parse_request
from micro_rm.scoring.engine import one_prompt, user_losses
from micro_rm.serve.auth import Principal, check_acts_as, scoring_principal
from micro_rm.serve.deps import get_batcher, get_metrics, get_scorer, get_settings, get_store
from micro_rm.serve.schemas import (CompareRequest, CompareResponse, OpenRLHFRequest, OpenRLHFResponse,
                                    ResponseScore, ScoreRequest, ScoreResponse, as_text)
from micro_rm.serve.settings import ServeSettings

router = APIRouter(tags=["scores"])


async def user_loss(store: Any, principal: Optional[Principal], user_id: Optional[str]
                    ) -> tuple[Optional[np.ndarray], int]:
    """``(S_u or None, feedback count)`` of ``user_id`` after checking the caller may read it.
    A user without feedback yet scores with the router's weights."""
    if user_id is None:
        return None, 0
    check_acts_as(principal, user_id)
    state = await run_in_threadpool(store.get, user_id, True)
    return state.cumulative_loss, state.num_feedback


@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, principal: Optional[Principal] = Depends(scoring_principal),
                settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher)) -> ScoreResponse:
    """The routed reward of each response to one prompt, with each head's reward and the weights
    used (the user's adapted weights when `user_id` is given)."""
    samples = one_prompt(as_text(body.prompt), [as_text(r) for r in body.responses], body.context, settings.limits)
    loss, count = await user_loss(store, principal, body.user_id)
    out = scorer.score(samples, await batcher.vectors(scorer.items(samples)), loss, settings.eta)
    return ScoreResponse(
        scores=[ResponseScore(reward=r, head_rewards=h) for r, h in zip(out.rewards.tolist(),
                                                                          out.head_rewards.tolist())],
        ranking=np.argsort(-out.rewards, kind="stable").tolist(),
        weights=out.weights[0].tolist(), prior_weights=out.prior[0].tolist(),
        user_id=body.user_id, num_feedback=count)


@router.post("/compare", response_model=CompareResponse)
async def compare(body: CompareRequest, principal: Optional[Principal] = Depends(scoring_principal),
                  settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                  scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher)) -> CompareResponse:
    """P(a ≻ b) = Σ_k w_k σ(r_k(a) − r_k(b)) under the (user's) routing, and each head's probability."""
    samples = one_prompt(as_text(body.prompt), [as_text(body.a), as_text(body.b)], body.context, settings.limits,
                         ["a", "b"])
    loss, count = await user_loss(store, principal, body.user_id)
    vectors = await batcher.vectors(scorer.items(samples))
    head_probs = scorer.head_probs(vectors[0:1], vectors[1:2])[0]
    out = scorer.score(samples, vectors, loss, settings.eta)
    return CompareResponse(p_a_beats_b=float(out.weights[0] @ head_probs), head_probs=head_probs.tolist(),
                           weights=out.weights[0].tolist(), prior_weights=out.prior[0].tolist(),
                           user_id=body.user_id, num_feedback=count)


@router.post("/get_reward", response_model=OpenRLHFResponse)
async def get_reward(body: OpenRLHFRequest, principal: Optional[Principal] = Depends(scoring_principal),
                     settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                     scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher),
                     metrics: Any = Depends(get_metrics)) -> OpenRLHFResponse:
    """OpenRLHF's remote reward server: `{"query": [prompt + response, ...], "prompts": [...],
    "labels": [...]}` → `{"rewards": [...], "scores": [...], "extra_logs": {...}}`, plus optional
    `context` (one, or one per query) and `user_id`. A query that does not contain its prompt
    (OpenRLHF cut the prompt from the left) is scored whole, logged and counted in
    `get_reward_prompt_not_found`."""
    parsed = parse_request(body.query, body.prompts, body.labels, mode=settings.labels, limits=settings.limits,
                           separator=body.separator, context=body.context, user_id=body.user_id)
    if parsed.missed:
        metrics.add("get_reward_prompt_not_found", len(parsed.missed))
    samples = parsed.samples
    # A user named by a label may be scored without a token: the operator chose `--labels` and
    # `--anonymous-scoring` for a trainer that sends none. A token must still be that user's.
    for user in sorted({u for u in samples.users if u}):
        if principal is not None or user not in parsed.from_labels:
            check_acts_as(principal, user)
    loss = await run_in_threadpool(user_losses, store, samples.users, scorer.num_heads) \
        if any(samples.users) else None
    out = scorer.score(samples, await batcher.vectors(scorer.items(samples)), loss, settings.eta)
    rewards = out.rewards.tolist()
    return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs=head_logs(out))
