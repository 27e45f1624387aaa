"""``GET /healthz``, ``GET /metrics`` (Prometheus) and ``GET /stats`` (JSON); no token needed:
none shows any user's data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from micro_rm.serve.deps import get_batcher, get_metrics, get_scorer, get_settings
from micro_rm.serve.settings import ServeSettings

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz(scorer: Any = Depends(get_scorer), settings: ServeSettings = Depends(get_settings)) -> dict:
    """Liveness and what is served."""
    config = scorer.model.config
    return {"status": "ok", "model_id": scorer.model_id, "variant": config.variant,
            "num_heads": config.num_heads, "backbone": scorer.backbone.name, "eta": settings.eta}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, metrics: Any = Depends(get_metrics), batcher: Any = Depends(get_batcher)) -> Response:
    """Prometheus text: requests by route and status, a latency histogram per route, counters
    (feedback pairs, truncated OpenRLHF prompts) and the feature path (LRU hits, texts encoded,
    micro-batches)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    extra = {"features": {**batcher.features.stats, **batcher.stats},
             "feedback_writes": dict(request.app.state.writer.stats)}
    return Response(metrics.prometheus(extra), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats")
def stats(request: Request, metrics: Any = Depends(get_metrics), batcher: Any = Depends(get_batcher)) -> dict:
    """The same as JSON for people: request counts by route and status, latency percentiles (ms)
    over the last 10,000 requests of each route, and the feature path: LRU hits, texts encoded,
    micro-batch sizes."""
    features = {**batcher.features.stats, **batcher.stats}
    if features["batches"]:
        features["mean_batch_items"] = features["batch_items"] / features["batches"]
        features["mean_batch_requests"] = features["batch_requests"] / features["batches"]
    return {**metrics.snapshot(), "features": features, "feedback_writes": dict(request.app.state.writer.stats)}
