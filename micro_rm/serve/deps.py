"""The service's dependencies: each reads one object that ``lifespan`` put on ``app.state``.

They are ``async`` so that FastAPI calls them inline instead of hopping to its thread pool.
Tests swap any of them with ``app.dependency_overrides[get_store] = lambda: my_store``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from micro_rm.serve.settings import ServeSettings


async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


async def get_store(request: Request) -> Any:
    """The per-user state store (:func:`micro_rm.online.open_store`)."""
    return request.app.state.store


async def get_token_store(request: Request) -> Any:
    """User id → token hash (:class:`micro_rm.serve.tokens.TokenStore`)."""
    return request.app.state.tokens


async def get_scorer(request: Request) -> Any:
    """The loaded model and backbone (:class:`micro_rm.serve.scoring.RewardScorer`)."""
    return request.app.state.scorer


async def get_batcher(request: Request) -> Any:
    """Features, micro-batched (:class:`micro_rm.serve.scoring.MicroBatcher`)."""
    return request.app.state.batcher


async def get_writer(request: Request) -> Any:
    """Group commit of feedback (:class:`micro_rm.serve.writer.FeedbackWriter`)."""
    return request.app.state.writer


async def get_metrics(request: Request) -> Any:
    return request.app.state.metrics
