"""``POST /score``, ``POST /compare`` and the OpenRLHF-compatible ``POST /get_reward``."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from micro_rm.integrations.common import label_fields, split_query
from micro_rm.integrations.openrlhf import head_logs
from micro_rm.serve.auth import Principal, check_acts_as, scoring_principal
from micro_rm.serve.deps import get_batcher, get_metrics, get_scorer, get_settings, get_store
from micro_rm.serve.routers.common import user_loss
from micro_rm.serve.schemas import (CompareRequest, CompareResponse, ResponseScore, RewardRequest,
                                    RewardResponse, ScoreRequest, ScoreResponse, as_text, check_texts)
from micro_rm.serve.settings import ServeSettings

log = logging.getLogger(__name__)
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
    vectors = await batcher.vectors(items + scorer.route_items(prompt, body.context))
    n = len(items)
    out = scorer.routed(vectors[:n], scorer.route_features(vectors[n:], [body.context]), loss, settings.eta)
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
                                     *scorer.route_items(prompt, body.context)])
    head_probs = scorer.head_probs(vectors[0:1], vectors[1:2])[0]
    out = scorer.routed(vectors[0:1], scorer.route_features(vectors[2:], [body.context]), loss, settings.eta)
    return CompareResponse(p_a_beats_b=float(out.weights[0] @ head_probs), head_probs=head_probs.tolist(),
                           weights=out.weights[0].tolist(), prior_weights=out.prior[0].tolist(),
                           user_id=body.user_id, num_feedback=count)


class OpenRLHFRequest(RewardRequest):
    """OpenRLHF's remote reward request: ``query``, ``prompts`` and ``labels`` (its
    ``--label_key`` column), plus micro-rm's optional ``context`` / ``user_id``."""

    labels: Optional[list[Any]] = Field(None, description="One label per query (OpenRLHF's "
                                        "`--label_key` column). What it carries is a server "
                                        "option, `--labels`: ignore, context, user_id or json "
                                        '({"context": ..., "user_id": ...}).')


class OpenRLHFResponse(RewardResponse):
    scores: list[float] = Field(description="The rewards again: OpenRLHF reads `scores` for "
                                "dynamic filtering.")
    extra_logs: dict[str, list[float]] = Field(description="Per query: each head's reward "
                                               "(`head{k}_reward`) and weight (`head{k}_weight`); "
                                               "OpenRLHF logs them.")


def split_queries(body: RewardRequest, metrics: Any = None) -> list[tuple[str, str]]:
    """(prompt, response) of each query.

    With ``prompts`` (OpenRLHF sends them): the response is the text after the first occurrence
    of the prompt in its query (:func:`~micro_rm.integrations.common.split_query`); a query
    that does not contain its prompt (OpenRLHF cut the prompt from the left to fit its length)
    is scored as a whole, counted in ``get_reward_prompt_not_found`` and logged. Otherwise, with
    ``separator``: the prompt is everything up to and including the separator's last occurrence.
    """
    def bad(detail: str) -> HTTPException:
        return HTTPException(422, detail=detail)

    if body.prompts is not None:
        if len(body.prompts) != len(body.query):
            raise bad(f"`prompts` has {len(body.prompts)} texts but `query` has {len(body.query)}; "
                      "give one prompt per query")
        pairs, missed = [], []
        for i, (query, prompt) in enumerate(zip(body.query, body.prompts)):
            prompt, response, found = split_query(query, prompt)
            pairs.append((prompt, response))
            if not found:
                missed.append(i)
        if missed:
            log.warning("/get_reward: %d of %d queries do not contain their prompt (first: query[%d]; "
                        "truncated from the left?); scored on the whole query", len(missed), len(pairs), missed[0])
            if metrics is not None:
                metrics.add("get_reward_prompt_not_found", len(missed))
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


def per_query_fields(body: OpenRLHFRequest, mode: str) -> tuple[list[Optional[str]], list[Optional[str]], set[str]]:
    """``(context, user_id)`` of each query, and the users named by labels. ``context`` /
    ``user_id`` in the body win over what a label carries."""
    n = len(body.query)
    contexts = body.context if isinstance(body.context, list) else [body.context] * n
    if len(contexts) != n:
        raise HTTPException(422, detail=f"`context` has {len(contexts)} entries but `query` has {n}")
    labels = body.labels if body.labels is not None else [None] * n
    if len(labels) != n:
        raise HTTPException(422, detail=f"`labels` has {len(labels)} entries but `query` has {n}")
    carried = [label_fields(label, mode, f"labels[{i}]") for i, label in enumerate(labels)]
    contexts = [c or lc for c, (lc, _) in zip(contexts, carried)]
    users = [body.user_id or lu for _, lu in carried]
    return contexts, users, {lu for _, lu in carried if lu and not body.user_id}


async def users_loss(store: Any, principal: Optional[Principal], users: list[Optional[str]],
                     from_labels: set[str]) -> Optional[np.ndarray]:
    """S_u of each query's user ([N, K]; zeros for none), or None when no query names a user.

    A user named by a label may be scored without a token: the operator chose `--labels` and
    `--anonymous-scoring` for a trainer that sends none. A token must still be that user's."""
    if not any(users):
        return None
    states = {}
    for user in sorted({u for u in users if u}):
        if principal is not None or user not in from_labels:
            check_acts_as(principal, user)
        states[user] = (await run_in_threadpool(store.get, user, True)).cumulative_loss
    zero = np.zeros_like(next(iter(states.values())))
    return np.stack([states[u] if u else zero for u in users])


@router.post("/get_reward", response_model=OpenRLHFResponse)
async def get_reward(body: OpenRLHFRequest, principal: Optional[Principal] = Depends(scoring_principal),
                     settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                     scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher),
                     metrics: Any = Depends(get_metrics)) -> OpenRLHFResponse:
    """OpenRLHF's remote reward server: `{"query": [prompt + response, ...], "prompts": [...],
    "labels": [...]}` → `{"rewards": [...], "scores": [...], "extra_logs": {...}}`, plus optional
    `context` (one, or one per query) and `user_id`."""
    contexts, users, from_labels = per_query_fields(body, settings.labels)
    check_texts(settings, len(body.query), [*((f"query[{i}]", q) for i, q in enumerate(body.query)),
                                            *((f"context[{i}]", c) for i, c in enumerate(contexts)),
                                            ("separator", body.separator)])
    pairs = split_queries(body, metrics)
    contexts = [c or None for c in contexts]
    loss = await users_loss(store, principal, users, from_labels)
    reward_items = [scorer.reward_item(p, r, c) for (p, r), c in zip(pairs, contexts)]
    route_items = [item for (p, _), c in zip(pairs, contexts) for item in scorer.route_items(p, c)]
    vectors = await batcher.vectors(reward_items + route_items)
    n = len(pairs)
    out = scorer.routed(vectors[:n], scorer.route_features(vectors[n:], contexts), loss, settings.eta)
    rewards = out.rewards.tolist()
    return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs=head_logs(out))

