"""``POST /users/{user_id}/queries``: which of these candidate pairs should the user label next?

The ranking of :mod:`micro_rm.scoring.suggest` (as ``micro-rm suggest``); nothing is written.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from micro_rm.scoring.suggest import check_pool, rank_pool
from micro_rm.serve.auth import Principal, check_acts_as, require_principal
from micro_rm.serve.deps import get_batcher, get_scorer, get_settings, get_store
from micro_rm.serve.schemas import Context, StrictModel, TextIn, UserPath
from micro_rm.serve.settings import ServeSettings

router = APIRouter(prefix="/users", tags=["users"])


class CandidatePair(StrictModel):
    prompt: Optional[TextIn] = Field(None, description="May be omitted when chosen/rejected are "
                                     "whole conversations (their shared prefix is the prompt).")
    chosen: TextIn = Field(description="One response (the order of the two means nothing here).")
    rejected: TextIn = Field(description="The other response.")
    context: Optional[Context] = None


class QueriesRequest(StrictModel):
    pairs: list[CandidatePair] = Field(description="The candidate pool (at most --max-texts pairs).",
                                       examples=[[{"prompt": "Explain gravity.", "chosen": "Mass bends "
                                                   "spacetime.", "rejected": "Things fall down, lol."}]])
    k: int = Field(1, description="How many pairs to suggest (the whole pool if it has fewer).")


class Suggested(BaseModel):
    index: int = Field(description="Position of the pair in `pairs`.")
    gain: float = Field(description="Expected drop (nats) of the entropy of the user's weights "
                        "once they label this pair.")


class QueriesResponse(BaseModel):
    queries: list[Suggested] = Field(description="The k most informative pairs, best first.")
    user_id: str
    num_feedback: int = Field(description="Feedback pairs behind the user's weights (0: the router's).")


@router.post("/{user_id}/queries", response_model=QueriesResponse)
async def queries(body: QueriesRequest,
                  user_id: str = UserPath,
                  principal: Principal = Depends(require_principal),
                  settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
                  scorer: Any = Depends(get_scorer), batcher: Any = Depends(get_batcher)) -> QueriesResponse:
    """The `k` candidate pairs whose labels would teach most about this user, best first (the
    user's token or the admin token). Label them, send them to `POST /feedback`, ask again."""
    check_acts_as(principal, user_id)
    records, k = check_pool([p.model_dump() for p in body.pairs], body.k, settings.limits)
    state = await run_in_threadpool(store.get, user_id, True)
    vectors = await batcher.vectors(scorer.pair_items(records))
    found = rank_pool(scorer, records, vectors, state.cumulative_loss, k, settings.eta)
    return QueriesResponse(queries=[Suggested(index=q.index, gain=q.gain) for q in found],
                           user_id=user_id, num_feedback=state.num_feedback)
