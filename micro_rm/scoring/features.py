"""A background consumer for the service: an asyncio queue of ``(payload, future)`` requests,
drained by one task that runs the blocking work in one dedicated thread.

:class:`~micro_rm.serve.scoring.MicroBatcher` (backbone calls) and
:class:`~micro_rm.serve.writer.FeedbackWriter` (store commits) build on it: each decides in
``_run`` how queued requests are grouped, and :meth:`QueueWorker._settle` hands every request of
a group its own slice of the group's result, or the group's error.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence


class QueueWorker:
    """``start`` / ``stop`` around a task running ``_run``; ``_submit`` queues one request."""

    def __init__(self, thread_name: str):
        self._thread_name = thread_name
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._queue = self._executor = None

    async def _submit(self, payload: Sequence[Any]) -> Any:
        """Queue ``payload`` for ``_run``; its slice of the result once its group has run."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((payload, future))
        return await future

    async def _run(self) -> None:
        raise NotImplementedError("subclasses take requests from self._queue and call _settle")

    async def _settle(self, group: list[tuple[Sequence[Any], asyncio.Future]],
                      fn: Callable[..., Sequence[Any]], *args: Any) -> bool:
        """Run ``fn(*args)`` in the worker thread for a whole group of requests, then give each
        request the next ``len(payload)`` rows of the result (in queue order), or, if ``fn``
        raised, the exception. Whether ``fn`` succeeded."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return False
        start = 0
        for payload, future in group:
            if not future.done():
                future.set_result(result[start:start + len(payload)])
            start += len(payload)
        return True
