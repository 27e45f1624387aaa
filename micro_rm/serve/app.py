"""The FastAPI application: assembles the routers; ``lifespan`` loads the model, opens the stores
and starts the micro-batcher (nothing happens at import).

>>> app = create_app(ServeSettings(model="runs/dsp"))      # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from micro_rm import __version__
from micro_rm.errors import MicroRMError
from micro_rm.serve.metrics import Metrics, MetricsMiddleware
from micro_rm.serve.schemas import ERROR_RESPONSES
from micro_rm.serve.settings import ServeSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Personalized rewards from a MiCRo model: K Bradley–Terry heads routed by
context, adapted to each user online from their feedback (Hedge with the router as the prior).

Send `Authorization: Bearer TOKEN`: the admin token creates users (`POST /users`) and their
tokens; a user token reads and writes only that user's state and feedback."""


def create_app(settings: ServeSettings, scorer: Optional[Any] = None) -> FastAPI:
    """The service for ``settings``. ``scorer`` (a loaded :class:`RewardScorer`) skips loading the
    model in ``lifespan``: the CLI loads it first to report errors, tests share one."""
    from micro_rm.serve.routers import feedback, health, heads, queries, scores, users

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from micro_rm.features.cache import FeatureCache
        from micro_rm.online import open_store
        from micro_rm.scoring.engine import RewardScorer
        from micro_rm.scoring.features import FeatureStore, MicroBatcher
        from micro_rm.serve.tokens import TokenStore
        from micro_rm.serve.writer import FeedbackWriter

        loaded = scorer or await run_in_threadpool(RewardScorer.load, settings.model, settings.device)
        with open_store(settings.state, loaded.model_id, loaded.num_heads) as store:
            store.check_states()      # a user state holding NaN/Inf refuses the start, naming it
            tokens = TokenStore(store)
            cache = FeatureCache(settings.cache_dir) if settings.disk_cache else None
            features = FeatureStore(loaded.backbone, cache, lru_items=settings.lru_items,
                                    batch_size=settings.encode_batch_size)
            batcher = MicroBatcher(features, wait_ms=settings.batch_wait_ms, max_items=settings.max_batch_items)
            writer = FeedbackWriter(store)
            await batcher.start()
            await writer.start()
            app.state.scorer, app.state.store, app.state.token_store = loaded, store, tokens
            app.state.batcher, app.state.writer = batcher, writer
            if not settings.admin_token:
                log.warning("no admin token: users cannot be created; set $MICRO_RM_ADMIN_TOKEN or "
                            "pass --admin-token-file")
            try:
                yield
            finally:
                await writer.stop()
                await batcher.stop()
                await run_in_threadpool(features.close)   # new vectors still queued for the disk cache

    handlers = {RequestValidationError: _validation_error, MicroRMError: _bad_input,
                StarletteHTTPException: _http_error, sqlite3.DatabaseError: _database_error}
    app = FastAPI(title="micro-rm reward service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, exception_handlers=handlers)
    app.state.settings = settings
    app.state.metrics = Metrics()
    for module in (scores, feedback, users, queries, health, heads):
        # Every error answer is documented with the one shape it has (schemas.ErrorResponse).
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each problem's location and message, and one line that names the most specific
    one. For a union (a feedback object or a list of them; a text or a message list) pydantic
    reports every alternative; the deepest location is the one the client meant, and the
    alternatives' type tags (``list[FeedbackItem]``, ``str``) are left out of the line."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    first = max(errors, key=lambda e: len(e["loc"])) if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if not _UNION_TAG.fullmatch(str(p)))
    return JSONResponse(status_code=422, content={"detail": errors, "message": f"{where}: {first['msg']}"})


_UNION_TAG = re.compile(r"str|int|float|bool|(list|dict)\[.*\]|[A-Z]\w*")


# FastAPI's words when the body is not decodable JSON at all (invalid UTF-8, nested too deeply).
_UNPARSED_BODY = "There was an error parsing the body"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every HTTP error as ``{"detail": ...}``; FastAPI's unparsable-body message also says why."""
    detail = exc.detail
    if exc.status_code == 400 and detail == _UNPARSED_BODY:
        detail = ("request body: not readable JSON (invalid UTF-8, or nested too deeply); send a "
                  "UTF-8 JSON object")
    return JSONResponse(status_code=exc.status_code, content={"detail": detail}, headers=exc.headers)


async def _bad_input(request: Request, exc: MicroRMError) -> JSONResponse:
    """An error with its own ``status`` (413 too many texts, 409 a damaged user state, 503 the
    state database or the backbone failed), else 422; one line."""
    return JSONResponse(status_code=getattr(exc, "status", 422), content={"detail": str(exc)})


async def _database_error(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
    """A damaged state database met outside the state store (the token table): 503, one line."""
    log.error("state database error: %s", exc)
    return JSONResponse(status_code=503, content={"detail": f"the state database cannot be used: {exc}; "
                                                            "the operator must restore it"})


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, whether or not it declares its length; 408
    (and the connection closed) for a body not fully received ``timeout_s`` after the request
    began, so a client that stalls mid-upload holds its connection at most that long."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._over_limit = f"request body larger than {max_bytes} bytes (--max-body-bytes); split the request"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _reject(scope, receive, send, 400, "invalid Content-Length header")
                return
            if too_big:
                await _reject(scope, receive, send, 413, self._over_limit)
                return
        # Read the whole body (bounded) before the app sees it, so a chunked upload cannot
        # exceed the limit either; then hand it on in one piece.
        received, more = bytearray(), True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await _reject(scope, receive, send, 408, f"request body not received within {self.timeout_s:g} s "
                              "(--body-timeout-s); send it without pauses", close=True)
                return
            if message["type"] == "http.disconnect":
                return
            received += message.get("body", b"")
            if len(received) > self.max_bytes:
                await _reject(scope, receive, send, 413, self._over_limit)
                return
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": bytes(received), "more_body": False}]

        async def replay() -> dict:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


async def _reject(scope: dict, receive: Any, send: Any, code: int, detail: str, close: bool = False) -> None:
    headers = {"Connection": "close"} if close else None
    await JSONResponse(status_code=code, content={"detail": detail}, headers=headers)(scope, receive, send)
