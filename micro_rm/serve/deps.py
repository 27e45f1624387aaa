"""The service's dependencies: each reads one object that ``lifespan`` put on ``app.state``.

They are ``async`` so that FastAPI calls them inline instead of hopping to its thread pool.
Tests swap any of them with ``app.dependency_overrides[get_store] = lambda: my_store``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import Request


def _from_app_state(attribute: str, doc: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency called ``get_<attribute>`` that returns ``request.app.state.<attribute>``."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    dependency.__name__ = dependency.__qualname__ = f"get_{attribute}"
    dependency.__doc__ = doc
    return dependency


get_settings = _from_app_state("settings", "The service's settings (:class:`micro_rm.serve.settings.ServeSettings`).")
get_store = _from_app_state("store", "The per-user state store (:func:`micro_rm.online.open_store`).")
get_token_store = _from_app_state("token_store", "User id → token hash (:class:`micro_rm.serve.tokens.TokenStore`).")
get_scorer = _from_app_state("scorer", "The loaded model and backbone (:class:`micro_rm.scoring.engine.RewardScorer`).")
get_batcher = _from_app_state("batcher", "Features, micro-batched (:class:`micro_rm.scoring.features.MicroBatcher`).")
get_writer = _from_app_state("writer", "Group commit of feedback (:class:`micro_rm.serve.writer.FeedbackWriter`).")
get_metrics = _from_app_state("metrics", "Request counts and latencies (:class:`micro_rm.serve.metrics.Metrics`).")
