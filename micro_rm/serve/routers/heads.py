"""``GET /heads``: the model's heads, their labels and which are masked; no token needed (it
shows no user's data). A masked head gets router weight 0 in every score and every user's
weights (``config.masked_heads``, applied inside the model's router)."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from micro_rm.serve.deps import get_scorer

router = APIRouter(tags=["service"])


class HeadInfo(BaseModel):
    head: int = Field(description="Index of the head (the order of per-head rewards and weights).")
    label: Optional[str] = Field(None, description="Its label from `micro-rm heads` (config.json), if any.")
    masked: bool = Field(description="Whether the router may never route to it.")


class HeadsResponse(BaseModel):
    model_id: str
    num_heads: int
    masked_heads: list[int]
    heads: list[HeadInfo]


@router.get("/heads", response_model=HeadsResponse)
def list_heads(scorer: Any = Depends(get_scorer)) -> HeadsResponse:
    """Each head of the served model with its label and whether it is masked."""
    config = scorer.model.config
    labels = list(config.head_labels) or [None] * config.num_heads
    return HeadsResponse(model_id=scorer.model_id, num_heads=config.num_heads, masked_heads=list(config.masked_heads),
                         heads=[HeadInfo(head=k, label=labels[k] or None, masked=k in config.masked_heads)
                                for k in range(config.num_heads)])
