"""Group commit for feedback: concurrent ``/feedback`` requests share one store transaction.

A durable SQLite commit costs one fsync (several ms on ordinary disks), so one transaction per
request caps the service at a few hundred updates per second whatever the CPU. The writer
gathers the requests that arrive while the previous commit runs and writes them all in one
transaction; each request is answered only after the commit that holds it, with the user's
state right after its own rows (as if the requests had run one by one, in arrival order).

The one-transaction path is the SQL stores' ``apply_feedback_many``; any other store (a test
double) gets one ``apply_feedback`` call per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import numpy as np

from micro_rm.online.hedge import UserState
from micro_rm.serve.worker import QueueWorker


def apply_feedback_many(store: Any, batches: Sequence[tuple[str, np.ndarray, list[dict]]]) -> list[UserState]:
    """Apply several ``(user_id, losses [n, K], payloads)`` batches in one transaction when the
    store can (the SQL stores' ``apply_feedback_many``); a test double gets one call per batch."""
    if hasattr(store, "apply_feedback_many"):
        return store.apply_feedback_many(batches)
    return [store.apply_feedback(user, losses, payloads) for user, losses, payloads in batches]


class FeedbackWriter(QueueWorker):
    """Async front of :func:`apply_feedback_many`: one commit at a time, each holding every
    request that queued meanwhile (at most ``max_batches``)."""

    def __init__(self, store: Any, max_batches: int = 256):
        super().__init__(thread_name="micro-rm-writer")
        self.store = store
        self.max_batches = max_batches
        self.stats = {"commits": 0, "committed_requests": 0}

    async def apply(self, store: Any, batches: list[tuple[str, np.ndarray, list[dict]]]) -> list[UserState]:
        """Each batch's resulting state, once all of them are durably committed (together)."""
        if self._queue is None or store is not self.store:   # not started, or a test's own store
            return await asyncio.get_running_loop().run_in_executor(None, apply_feedback_many, store, batches)
        return await self._submit(batches)

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.max_batches and not self._queue.empty():
                group.append(self._queue.get_nowait())
            # On an error nothing of the group was committed, and every request fails.
            if await self._settle(group, apply_feedback_many, self.store,
                                  [b for batches, _ in group for b in batches]):
                self.stats["commits"] += 1
                self.stats["committed_requests"] += len(group)
