"""Group commit for feedback: concurrent ``/feedback`` requests share one store transaction.

One fsync per request would cap the service at a few hundred updates per second, so the requests
that arrive while a commit runs are written together in the next one. Each is answered after that
commit, with its users' states as if the requests had run one by one; a stale request (deleted
user, used Idempotency-Key) is dropped and answered with its error, and the others commit.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence, Union

from micro_rm.online.hedge import UserState
from micro_rm.online.requests import FeedbackRequest, StaleRequest
from micro_rm.scoring.features import QueueWorker


def apply_requests(store: Any, requests: Sequence[FeedbackRequest]
                   ) -> list[Union[list[UserState], StaleRequest]]:
    """Each request's states, or the :class:`StaleRequest` that refused it; every applied request
    in one transaction (retried without the refused ones)."""
    results: dict[int, Union[list[UserState], StaleRequest]] = {}
    pending = list(range(len(requests)))
    while pending:
        try:
            results.update(zip(pending, store.apply_requests([requests[i] for i in pending])))
            break
        except StaleRequest as exc:
            results[pending.pop(exc.index)] = exc
    return [results[i] for i in range(len(requests))]


class FeedbackWriter(QueueWorker):
    """Async front of :func:`apply_requests`: one commit at a time, each holding every request
    that queued meanwhile (at most ``max_batches``)."""

    def __init__(self, store: Any, max_batches: int = 256):
        super().__init__(thread_name="micro-rm-writer")
        self.store = store
        self.max_batches = max_batches
        self.stats = {"commits": 0, "committed_requests": 0}

    async def apply(self, store: Any, request: FeedbackRequest) -> list[UserState]:
        """The request's states once durably committed, or its :class:`StaleRequest` raised."""
        if self._queue is None or store is not self.store:   # not started, or a test's own store
            result = await asyncio.get_running_loop().run_in_executor(None, apply_requests, store, [request])
        else:
            result = await self._submit([request])
        if isinstance(result[0], StaleRequest):
            raise result[0]
        return result[0]

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.max_batches and not self._queue.empty():
                group.append(self._queue.get_nowait())
            # On an error nothing of the group was committed, and every request fails.
            if await self._settle(group, apply_requests, self.store,
                                  [r for requests, _ in group for r in requests]):
                self.stats["commits"] += 1
                self.stats["committed_requests"] += len(group)
