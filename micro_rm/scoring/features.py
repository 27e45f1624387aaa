"""Vectors of items: :class:`FeatureStore` (an in-memory LRU in front of the feature cache in front
of the backbone) and, for the service, :class:`MicroBatcher`, which encodes the uncached items of
concurrent, already checked requests in shared backbone calls (docs/service.md). :class:`QueueWorker`,
an asyncio queue drained in one thread, is the base of the batcher and of the service's feedback writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.features.base import Backbone, Item

if TYPE_CHECKING:
    from micro_rm.features.cache import ShardWriter


class EncodeFailed(MicroRMError):
    """The backbone failed on one request's texts, even alone (HTTP 503, naming the cause)."""

    status = 503


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
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
                      fn: Callable[..., Sequence[Any]], *args: Any, errors: bool = True) -> bool:
        """Run ``fn(*args)`` in the worker thread for a whole group of requests, then give each
        request the next ``len(payload)`` rows of the result (in queue order), or, if ``fn``
        raised and ``errors``, the exception. Whether ``fn`` succeeded."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            for _, future in group if errors else ():
                if not future.done():
                    future.set_exception(exc)
            return False
        start = 0
        for payload, future in group:
            if not future.done():
                future.set_result(result[start:start + len(payload)])
            start += len(payload)
        return True


class FeatureStore:
    """Vectors of items: an in-memory LRU in front of the on-disk :class:`FeatureCache`, in
    front of the backbone. Thread-safe; the backbone runs one batch at a time.

    New vectors are rounded to the cache's storage dtype, answered at once and written to the
    cache by a :class:`~micro_rm.features.cache.ShardWriter` thread, so no caller waits for the
    disk, and a fresh answer equals a cached one bit for bit. :meth:`close` waits for the
    writes; a failed write is logged and counted (``disk_cache_write_failures``), never raised.
    """

    def __init__(self, backbone: Backbone, cache: Any = None, *, lru_items: int = 100_000,
                 batch_size: int = 32):
        from micro_rm.features.cache import ShardWriter

        self.backbone = backbone
        self.cache = cache                      # a FeatureCache, or None for LRU only
        self.lru_items = lru_items
        self.batch_size = batch_size
        self._fingerprint: dict[str, Any] = backbone.fingerprint() if cache is not None else {}
        self._writer: Optional[ShardWriter] = ShardWriter(cache, self._fingerprint) if cache is not None else None
        self._lru: OrderedDict[Item, np.ndarray] = OrderedDict()
        self._lru_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._counts = {"lru_hits": 0, "lru_misses": 0, "encoded": 0, "from_disk_cache": 0,
                        "encode_calls": 0, "encode_seconds": 0.0}

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: LRU hits and misses, items encoded or read from the disk cache, backbone
        calls and seconds, and (with a disk cache) vectors written to it and failed writes."""
        return {**self._counts, **(self._writer.stats if self._writer is not None else {})}

    def lookup(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int]]:
        """``(vectors [n, dim], indices not in memory)``; missing rows are zero."""
        out = np.zeros((len(items), self.backbone.dim), dtype=np.float32)
        missing = []
        with self._lru_lock:
            for i, item in enumerate(items):
                vector = self._lru.get(item)
                if vector is None:
                    missing.append(i)
                else:
                    self._lru.move_to_end(item)
                    out[i] = vector
            self._counts["lru_hits"] += len(items) - len(missing)
            self._counts["lru_misses"] += len(missing)
        return out, missing

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors of ``items`` from the disk cache or the backbone (not the LRU); fills the LRU."""
        unique = list(dict.fromkeys(items))
        start = time.perf_counter()
        with self._encode_lock:
            if self._writer is not None:
                vectors, encoded = self._cached_or_encoded(unique, self._writer)
            else:
                vectors = np.concatenate([np.asarray(self.backbone.encode(unique[i:i + self.batch_size]),
                                                     dtype=np.float32)
                                          for i in range(0, len(unique), self.batch_size)])
                encoded = len(unique)
        with self._lru_lock:
            self._counts["encoded"] += encoded
            self._counts["from_disk_cache"] += len(unique) - encoded
            self._counts["encode_calls"] += 1
            self._counts["encode_seconds"] += time.perf_counter() - start
            if self.lru_items:
                for item, vector in zip(unique, vectors):
                    self._lru[item] = vector
                    self._lru.move_to_end(item)
                while len(self._lru) > self.lru_items:
                    self._lru.popitem(last=False)
        if len(unique) == len(items):
            return vectors
        position = {item: i for i, item in enumerate(unique)}
        return vectors[[position[item] for item in items]]

    def _cached_or_encoded(self, unique: list[Item], writer: "ShardWriter") -> tuple[np.ndarray, int]:
        """Vectors of the ``unique`` items [n, dim] float32 (from the writer's queue, the disk
        cache, or the backbone, rounded as the cache stores them) and how many were encoded.
        The new ones go to the writer thread."""
        from micro_rm.features.shards import item_keys

        keys = item_keys(self._fingerprint, unique)
        vectors = np.zeros((len(unique), self.backbone.dim), dtype=np.float32)
        found = writer.lookup(keys, vectors)
        rest = np.flatnonzero(~found)
        if len(rest):
            on_disk, vectors[rest] = self.cache.lookup(keys[rest], self._fingerprint, self.backbone.dim)
            found[rest] = on_disk
        missing = np.flatnonzero(~found)
        if len(missing):
            stored = self.cache.encode([unique[i] for i in missing], self.backbone, batch_size=self.batch_size)
            vectors[missing] = stored            # fp16 -> fp32 is exact: what a cached read returns
            writer.put(keys[missing], stored)
        return vectors, len(missing)

    def vectors(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors of ``items`` [n, dim], encoding only what no cache holds (synchronous)."""
        out, missing = self.lookup(items)
        if missing:
            out[missing] = self.encode([items[i] for i in missing])
        return out

    def close(self) -> None:
        """Wait until every new vector is in the disk cache (or its write has failed)."""
        if self._writer is not None:
            self._writer.flush()


class MicroBatcher(QueueWorker):
    """Gathers the uncached items of concurrent requests into one backbone call.

    When the backbone is free, a batch takes every request queued meanwhile (up to ``max_items``
    items; with ``wait_ms`` > 0 it first waits that long for more) and runs in a worker thread
    while the next batch gathers. Items already in memory never wait.

    A request's items are queued in slices of at most ``max_items`` items and ``max_chars``
    characters, one slice at a time, so a request that arrives while a large one is encoded waits
    for at most one slice, never for the whole large request. If the backbone fails on a request
    even alone, that request gets :class:`EncodeFailed` (503); the others are answered.
    """

    def __init__(self, features: FeatureStore, *, wait_ms: float = 0.0, max_items: int = 256,
                 max_chars: int = 200_000):
        super().__init__(thread_name="micro-rm-encode")
        self.features = features
        self.wait = wait_ms / 1000.0
        self.max_items = max_items
        self.max_chars = max_chars
        self.stats = {"batches": 0, "batch_items": 0, "batch_requests": 0, "retried_alone": 0}

    async def vectors(self, items: Sequence[Item]) -> np.ndarray:
        out, missing = self.features.lookup(items)
        if not missing:
            return out
        wanted = [items[i] for i in missing]
        try:
            if self._queue is None:  # not started (no running lifespan): encode inline
                out[missing] = self.features.encode(wanted)
                return out
            out[missing] = np.concatenate([await self._submit(part) for part in self.slices(wanted)])
        except MicroRMError:
            raise
        except Exception as exc:
            raise EncodeFailed(f"the backbone failed on this request's texts ({type(exc).__name__}: {exc}); "
                               "concurrent requests were answered; retry, or report it if it persists") from exc
        return out

    def slices(self, items: Sequence[Item]) -> list[list[Item]]:
        """``items`` cut into consecutive slices of at most ``max_items`` items and
        ``max_chars`` characters (a longer item is a slice alone)."""
        out: list[list[Item]] = [[]]
        chars = 0
        for item in items:
            size = sum(len(part) for part in item if isinstance(part, str))   # its texts' characters
            if out[-1] and (len(out[-1]) >= self.max_items or chars + size > self.max_chars):
                out.append([])
                chars = 0
            out[-1].append(item)
            chars += size
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.wait
            while size < self.max_items:
                try:
                    if self._queue.empty():
                        timeout = deadline - loop.time()
                        if timeout <= 0:
                            break
                        request = await asyncio.wait_for(self._queue.get(), timeout)
                    else:
                        request = self._queue.get_nowait()
                except asyncio.TimeoutError:
                    break
                batch.append(request)
                size += len(request[0])
            items = [item for request_items, _ in batch for item in request_items]
            if await self._settle(batch, self.features.encode, items, errors=len(batch) == 1):
                self.stats["batches"] += 1
                self.stats["batch_items"] += len(items)
                self.stats["batch_requests"] += len(batch)
            elif len(batch) > 1:   # the shared call failed: each request alone, so only its cause fails
                self.stats["retried_alone"] += len(batch)
                for request in batch:
                    await self._settle([request], self.features.encode, list(request[0]))


