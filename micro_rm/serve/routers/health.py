"""``GET /healthz`` and ``GET /metrics`` (no token needed: neither shows any user's data)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from micro_rm.serve.deps import get_batcher, get_metrics, get_scorer, get_settings
from micro_rm.serve.settings import ServeSettings

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz(scorer: Any = Depends(get_scorer), settings: ServeSettings = Depends(get_settings)) -> dict:
    """Liveness and what is served."""
    config = scorer.model.config
    return {"status": "ok", "model_id": scorer.model_id, "variant": config.variant,
            "num_heads": config.num_heads, "backbone": scorer.backbone.name, "eta": settings.eta}


@router.get("/metrics")
def metrics(request: Request, metrics: Any = Depends(get_metrics), batcher: Any = Depends(get_batcher)) -> dict:
    """Request counts by route and status, latency percentiles (ms) over the last 10,000
    requests of each route, and the feature path: LRU hits, texts encoded, micro-batch sizes."""
    out = metrics.snapshot()
    features = dict(batcher.features.stats)
    features.update(batcher.stats)
    if batcher.stats["batches"]:
        features["mean_batch_items"] = batcher.stats["batch_items"] / batcher.stats["batches"]
        features["mean_batch_requests"] = batcher.stats["batch_requests"] / batcher.stats["batches"]
    out["features"] = features
    out["feedback_writes"] = dict(request.app.state.writer.stats)
    return out
