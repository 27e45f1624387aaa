"""``POST /feedback``: one labelled pair or a list of them → each user's updated Hedge state.

Each pair's scaled per-head losses (:func:`micro_rm.online.pair_losses`) join S_u in a transaction
shared with concurrent requests (:mod:`micro_rm.serve.writer`); final deletion and exactly-once
``Idempotency-Key`` retries are checked inside it, not before (docs/service.md, "Guarantees").
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Optional, Union

import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Response
from starlette.concurrency import run_in_threadpool

from micro_rm.online.hedge import feedback_weights
from micro_rm.online.requests import DuplicateKey, FeedbackRequest, UserDeleted
from micro_rm.scoring.limits import check_count, check_pair
from micro_rm.serve.auth import Principal, check_acts_as, require_principal
from micro_rm.serve.deps import get_batcher, get_metrics, get_scorer, get_settings, get_store, get_writer
from micro_rm.serve.schemas import FeedbackItem, FeedbackResponse, UserWeights
from micro_rm.serve.settings import ServeSettings

router = APIRouter(tags=["feedback"])
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as in the IETF draft


def _records(body: Union[list[FeedbackItem], FeedbackItem], principal: Principal,
             settings: ServeSettings) -> tuple[list[dict[str, Any]], list[str]]:
    """Each pair as a validated record (the CLI's rule: :func:`normalize_pair`) and its user."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPException(422, detail="no feedback pairs in the list")
    check_count(len(items), settings.limits)
    records, users = [], []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if isinstance(body, list) else "feedback"
        user = item.user_id or principal.user_id
        if user is None:
            raise HTTPException(422, detail=f"{where}: `user_id` is required with the admin token")
        check_acts_as(principal, user)
        records.append(check_pair(item.model_dump(exclude={"user_id"}), where, settings.limits))
        users.append(user)
    return records, users


def _request_digest(body: Union[list[FeedbackItem], FeedbackItem]) -> str:
    """A hash of the body's meaning (key order and spacing do not matter)."""
    dumped = [i.model_dump() for i in body] if isinstance(body, list) else body.model_dump()
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()


def _answer(scorer: Any, settings: ServeSettings, records: list[dict[str, Any]], users: list[str],
            vectors: np.ndarray, states: dict[str, tuple[int, np.ndarray]]) -> FeedbackResponse:
    """The response: each user's state after the request, and the routed weights for its last
    pair. Built the same way for the first answer and for a replayed Idempotency-Key."""
    n = len(records)
    routes = scorer.route_features(vectors[2 * n:], [r.get("context") for r in records])
    masked = scorer.model.config.masked_heads
    out = []
    for user, last in {u: i for i, u in enumerate(users)}.items():   # each user, at its last pair
        num_feedback, loss = states[user]
        routed = scorer.routed(vectors[last:last + 1], routes[last:last + 1], loss, settings.eta)
        out.append(UserWeights(user_id=user, num_feedback=num_feedback, cumulative_loss=loss.tolist(),
                               feedback_weights=feedback_weights(loss, settings.eta, masked).tolist(),
                               weights=routed.weights[0].tolist()))
    return FeedbackResponse(accepted=n, users=out)


async def _replay(store: Any, scope: str, key: str, digest: str) -> Optional[dict[str, tuple[int, np.ndarray]]]:
    """The stored states of a used key (None if unused); 422 if it came with another body."""
    found = await run_in_threadpool(store.idempotent_result, scope, key)
    if found is None:
        return None
    if found.request_sha256 != digest:
        raise HTTPException(422, detail=f"Idempotency-Key {key!r} was already used with a different "
                                        "body; use a new key for a new request")
    if found.states is None:
        raise HTTPException(409, detail=f"Idempotency-Key {key!r} was applied to a user who has since been "
                                        "deleted; nothing was applied again")
    return {u: (n, np.asarray(loss, dtype=np.float64)) for u, (n, loss) in found.states.items()}


@router.post("/feedback", response_model=FeedbackResponse)
async def feedback(body: Union[list[FeedbackItem], FeedbackItem], response: Response,
                   idempotency_key: Optional[str] = Header(
                       None, description="Makes a retry safe: a repeated key (per token) applies "
                       "nothing and returns the first answer. 1-255 visible ASCII characters; kept "
                       "24 hours.", examples=["3f1c2a9e-feedback-17"]),
                   principal: Principal = Depends(require_principal),
                   settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                   scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher),
                   writer: Any = Depends(get_writer), metrics: Any = Depends(get_metrics)) -> FeedbackResponse:
    """Record that `chosen` beat `rejected` for a user (one object, or a list) and return each
    user's new state. A user token may omit `user_id`; the admin token must give it."""
    records, users = _records(body, principal, settings)
    key = None
    if idempotency_key is not None:
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise HTTPException(422, detail="Idempotency-Key must be 1-255 visible ASCII characters")
        scope = "admin" if principal.admin else f"user:{principal.user_id}"
        key = (scope, idempotency_key, _request_digest(body))
    # Epochs now, before the slow part: a deletion from here on refuses this request at commit.
    if principal.admin:
        epochs = {u: await run_in_threadpool(store.epoch, u) for u in dict.fromkeys(users)}
    else:
        epochs = {principal.user_id: principal.epoch} if principal.epoch is not None else {}

    n = len(records)
    replayed = await _replay(store, *key) if key else None
    vectors = await batcher.vectors(scorer.pair_items(records))
    if replayed is None:
        losses = scorer.feedback_losses(vectors[:n], vectors[n:2 * n])                   # [n, K]
        groups = {user: [i for i, u in enumerate(users) if u == user] for user in dict.fromkeys(users)}
        batches = [(user, losses[rows], [records[i] for i in rows]) for user, rows in groups.items()]
        try:
            states = await writer.apply(store, FeedbackRequest(batches, epochs or None, key))
            metrics.add("feedback_pairs", n)
            return _answer(scorer, settings, records, users, vectors,
                           {s.user_id: (s.num_feedback, s.cumulative_loss) for s in states})
        except UserDeleted as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except DuplicateKey:      # the same key committed meanwhile (a concurrent retry)
            replayed = await _replay(store, *key)
            if replayed is None:  # pragma: no cover - the key expired between two reads
                raise HTTPException(409, detail="Idempotency-Key collided; retry") from None
    response.headers["Idempotent-Replayed"] = "true"
    return _answer(scorer, settings, records, users, vectors, replayed)
