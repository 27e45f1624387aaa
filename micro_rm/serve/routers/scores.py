"""``POST /score``, ``POST /compare`` and the OpenRLHF-compatible ``POST /get_reward``."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Depends, HTTPException

from micro_rm.serve.auth import Principal, scoring_principal
from micro_rm.serve.deps import get_batcher, get_scorer, get_settings, get_store
from micro_rm.serve.routers.common import user_loss
from micro_rm.serve.schemas import (CompareRequest, CompareResponse, ResponseScore, RewardRequest,
                                    RewardResponse, ScoreRequest, ScoreResponse, as_text, check_texts)
from micro_rm.serve.settings import ServeSettings

router = APIRouter(tags=["scores"])


@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, principal: Optional[Principal] = Depends(scoring_principal),
                settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher)) -> ScoreResponse:
    """The routed reward of each response to one prompt, with each head's reward and the weights
    used (the user's adapted weights when `user_id` is given)."""
    prompt, responses = as_text(body.prompt), [as_text(r) for r in body.responses]
    check_texts(settings, len(responses), [("prompt", prompt), ("context", body.context),
                                           *((f"responses[{i}]", r) for i, r in enumerate(responses))])
    loss, count = await user_loss(store, principal, body.user_id)
    items = [scorer.reward_item(prompt, r, body.context) for r in responses]
    vectors = await batcher.vectors(items + [scorer.route_item(prompt, body.context)])
    out = scorer.routed(vectors[:-1], vectors[-1:], loss, settings.eta)
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
    prompt, a, b = as_text(body.prompt), as_text(body.a), as_text(body.b)
    check_texts(settings, 2, [("prompt", prompt), ("a", a), ("b", b), ("context", body.context)])
    loss, count = await user_loss(store, principal, body.user_id)
    vectors = await batcher.vectors([scorer.reward_item(prompt, a, body.context),
                                     scorer.reward_item(prompt, b, body.context),
                                     scorer.route_item(prompt, body.context)])
    head_probs = scorer.head_probs(vectors[0:1], vectors[1:2])[0]
    out = scorer.routed(vectors[0:1], vectors[2:3], loss, settings.eta)
    return CompareResponse(p_a_beats_b=float(out.weights[0] @ head_probs), head_probs=head_probs.tolist(),
                           weights=out.weights[0].tolist(), prior_weights=out.prior[0].tolist(),
                           user_id=body.user_id, num_feedback=count)


def split_queries(body: RewardRequest) -> list[tuple[str, str]]:
    """(prompt, response) of each query.

    With ``prompts`` (OpenRLHF sends them): the response is the text after the first occurrence
    of the prompt in its query, so padding or BOS tokens decoded ahead of the prompt are skipped.
    Otherwise, with ``separator``: the prompt is everything up to and including the separator's
    last occurrence. A query that cannot be split is a 422: guessing would score the wrong text.
    """
    def bad(detail: str) -> HTTPException:
        return HTTPException(422, detail=detail)

    if body.prompts is not None:
        if len(body.prompts) != len(body.query):
            raise bad(f"`prompts` has {len(body.prompts)} texts but `query` has {len(body.query)}; "
                      "give one prompt per query")
        pairs = []
        for i, (query, prompt) in enumerate(zip(body.query, body.prompts)):
            at = query.find(prompt)
            if at < 0:
                raise bad(f"query[{i}] does not contain prompts[{i}]; each query must be its prompt "
                          "followed by the response")
            pairs.append((prompt, query[at + len(prompt):]))
        return pairs
    if body.separator is not None:
        pairs = []
        for i, query in enumerate(body.query):
            at = query.rfind(body.separator)
            if at < 0:
                raise bad(f"query[{i}] does not contain the separator {body.separator!r}")
            cut = at + len(body.separator)
            pairs.append((query[:cut], query[cut:]))
        return pairs
    raise bad("cannot tell prompt from response: give `prompts` (one per query, as OpenRLHF sends "
              "them) or a `separator` (e.g. the chat template's assistant header)")


@router.post("/get_reward", response_model=RewardResponse)
async def get_reward(body: RewardRequest, principal: Optional[Principal] = Depends(scoring_principal),
                     settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                     scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher)) -> RewardResponse:
    """OpenRLHF's remote reward server: `{"query": [prompt + response, ...], "prompts": [...]}` →
    `{"rewards": [...]}`, plus optional `context` (one, or one per query) and `user_id`."""
    contexts = body.context if isinstance(body.context, list) else [body.context] * len(body.query)
    if len(contexts) != len(body.query):
        raise HTTPException(422,
                            detail=f"`context` has {len(contexts)} entries but `query` has {len(body.query)}")
    check_texts(settings, len(body.query), [*((f"query[{i}]", q) for i, q in enumerate(body.query)),
                                            *((f"context[{i}]", c) for i, c in enumerate(contexts)),
                                            ("separator", body.separator)])
    pairs = split_queries(body)
    contexts = [c or None for c in contexts]
    loss, _ = await user_loss(store, principal, body.user_id)
    reward_items = [scorer.reward_item(p, r, c) for (p, r), c in zip(pairs, contexts)]
    route_items = [scorer.route_item(p, c) for (p, _), c in zip(pairs, contexts)]
    vectors = await batcher.vectors(reward_items + route_items)
    n = len(pairs)
    out = scorer.routed(vectors[:n], vectors[n:], loss, settings.eta)
    return RewardResponse(rewards=out.rewards.tolist())
