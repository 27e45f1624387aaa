"""``POST /feedback``: one labelled pair or a list of them → each user's updated Hedge state.

For each pair, every head's probability of the observed label σ(r_k(chosen) − r_k(rejected))
becomes a scaled loss in [0, 1] (:func:`micro_rm.online.pair_losses`); the pairs of one user are
added to S_u in one store transaction (shared with the other requests waiting at that moment:
group commit, see :mod:`micro_rm.serve.writer`), so concurrent requests (threads, processes,
replicas) never lose an update.
"""

from __future__ import annotations

from typing import Any, Union

from fastapi import APIRouter, Depends, HTTPException

from micro_rm.data.records import normalize_pair
from micro_rm.errors import InvalidRecord
from micro_rm.serve.auth import Principal, check_acts_as, require_principal
from micro_rm.serve.deps import get_batcher, get_metrics, get_scorer, get_settings, get_store, get_writer
from micro_rm.serve.routers.common import feedback_weights
from micro_rm.serve.schemas import FeedbackItem, FeedbackResponse, UserWeights, as_text, check_texts
from micro_rm.serve.settings import ServeSettings

router = APIRouter(tags=["feedback"])


@router.post("/feedback", response_model=FeedbackResponse)
async def feedback(body: Union[list[FeedbackItem], FeedbackItem],
                   principal: Principal = Depends(require_principal),
                   settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                   scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher),
                   writer: Any = Depends(get_writer), metrics: Any = Depends(get_metrics)) -> FeedbackResponse:
    """Record that `chosen` beat `rejected` for a user (one object, or a list) and return each
    user's new state. A user token may omit `user_id`; the admin token must give it."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPException(422, detail="no feedback pairs in the list")
    check_texts(settings, len(items), [])
    records, users = [], []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if isinstance(body, list) else "feedback"
        user = item.user_id or principal.user_id
        if user is None:
            raise HTTPException(422,
                                detail=f"{where}: `user_id` is required with the admin token")
        check_acts_as(principal, user)
        raw = {"prompt": None if item.prompt is None else as_text(item.prompt),
               "chosen": as_text(item.chosen), "rejected": as_text(item.rejected), "context": item.context}
        check_texts(settings, len(items), [(f"{where}.{k}", v) for k, v in raw.items()])
        try:
            records.append(normalize_pair(raw, where=where))
        except InvalidRecord as exc:
            raise HTTPException(422,
                                detail=str(exc).replace("; fix it or pass --skip-invalid", "")) from None
        users.append(user)

    n = len(records)
    vectors = await batcher.vectors(
        [scorer.reward_item(r["prompt"], r["chosen"], r.get("context")) for r in records]
        + [scorer.reward_item(r["prompt"], r["rejected"], r.get("context")) for r in records]
        + [scorer.route_item(r["prompt"], r.get("context")) for r in records])
    losses = scorer.feedback_losses(vectors[:n], vectors[n:2 * n])                       # [n, K]
    groups = {user: [i for i, u in enumerate(users) if u == user] for user in dict.fromkeys(users)}
    batches = [(user, losses[rows], [{k: records[i][k] for k in ("prompt", "chosen", "rejected", "context")
                                      if k in records[i]} for i in rows])
               for user, rows in groups.items()]
    states = await writer.apply(store, batches)                 # one transaction for the request
    out = []
    for (user, rows), state in zip(groups.items(), states):
        last = rows[-1]
        routed = scorer.routed(vectors[last:last + 1], vectors[2 * n + last:2 * n + last + 1],
                               state.cumulative_loss, settings.eta)
        out.append(UserWeights(user_id=user, num_feedback=state.num_feedback,
                               cumulative_loss=state.cumulative_loss.tolist(),
                               feedback_weights=feedback_weights(state.cumulative_loss, settings.eta),
                               weights=routed.weights[0].tolist()))
    metrics.add("feedback_pairs", n)
    return FeedbackResponse(accepted=n, users=out)
