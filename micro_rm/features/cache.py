"""The feature cache: every unique item is encoded once per backbone setting and kept on disk.

Shards: :mod:`micro_rm.features.shards`; their index: :mod:`micro_rm.features.index`. New vectors
are flushed to a shard every ``shard_size`` items or ``flush_seconds``, so an interrupted run keeps
what it finished. The service encodes with :meth:`FeatureCache.encode` and stores the vectors
later, in a :class:`ShardWriter` thread, off the request path.

>>> cache = FeatureCache("features")                                 # doctest: +SKIP
>>> vectors, stats = cache.get_or_encode([("Hi", "Hello!")], backbone)  # doctest: +SKIP
>>> stats.encoded, vectors.shape                                     # doctest: +SKIP
(1, (1, 384))
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from micro_rm.atomic import check_output_path
from micro_rm.errors import MicroRMError
from micro_rm.features.backbones import fingerprint_id
from micro_rm.features.backbones.sources import user_cache
from micro_rm.features.base import STORAGE_DTYPES, Backbone, Item
from micro_rm.features.batching import check_batching, plan_batches
from micro_rm.features.index import CacheFolder
from micro_rm.features.shards import check_fingerprint, item_keys

if TYPE_CHECKING:
    from micro_rm.features.distributed import RankGroup

log = logging.getLogger(__name__)


@dataclass
class EncodeStats:
    """What one :meth:`FeatureCache.get_or_encode` call did."""

    texts: int          # unique items asked for
    encoded: int        # of those, run through the backbone now
    from_cache: int     # of those, read from the cache
    seconds: float      # wall time of the call
    ranks: int = 1      # processes that shared the encoding (torchrun / accelerate launch)


class FeatureCache:
    """Backbone vectors on disk, keyed by (backbone fingerprint, item).

    ``root`` holds one folder per backbone setting (default: ``$MICRO_RM_CACHE``, else
    ``<user cache dir>/micro-rm/features``); ``dtype`` is the precision of new shards,
    ``"float16"`` (half the disk) or ``"float32"`` (exact)."""

    def __init__(self, root: str | os.PathLike | None = None, dtype: str = "float16", *,
                 shard_size: int = 2048, flush_seconds: float = 60.0):
        if dtype not in STORAGE_DTYPES:
            raise MicroRMError(f"cache storage dtype (--storage) must be one of "
                               f"{', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        if shard_size < 1:
            raise MicroRMError(f"shard_size must be at least 1, got {shard_size}")
        # A file in the way is refused here, not at the first write (a 500 in the service).
        self.root = check_output_path(root if root is not None else user_cache("MICRO_RM_CACHE", "features"),
                                      "feature cache (--cache)", folder=True, writable=False)
        self.dtype = dtype
        self.shard_size = shard_size
        self.flush_seconds = flush_seconds
        self._folders: dict[str, CacheFolder] = {}
        self._folders_lock = threading.Lock()   # the service's writer thread opens folders too

    def folder(self, fingerprint: dict[str, Any]) -> Path:
        """Where the vectors of this backbone setting live."""
        return self.root / fingerprint_id(fingerprint)

    def _open(self, fingerprint: dict[str, Any], create: bool) -> CacheFolder:
        path = self.folder(fingerprint)
        with self._folders_lock:
            folder = self._folders.get(path.name)
            if folder is not None:   # its fingerprint.json was checked; the folder name is its hash
                return folder
            folder = CacheFolder(path)
            # Checked until it exists: another process may create the folder meanwhile.
            if check_fingerprint(path, fingerprint, create):
                self._folders[path.name] = folder
            return folder

    def lookup(self, keys: np.ndarray, fingerprint: dict[str, Any], dim: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(found [n] bool, vectors [n, dim] float32)`` for ``keys`` (from :func:`item_keys`)."""
        return self._open(fingerprint, create=False).lookup(np.asarray(keys, np.uint8), dim)

    def encode(self, items: Sequence[Item], backbone: Backbone, *, batch_size: int = 32) -> np.ndarray:
        """Vectors of unique ``items`` as this cache would store them (``[n, dim]``, storage dtype,
        the batches of ``get_or_encode``), without writing them (see :meth:`write`)."""
        check_batching(batch_size, None)
        out = np.empty((len(items), backbone.dim), dtype=self.dtype)
        for rows in plan_batches(backbone.token_lengths(items), batch_size=batch_size):
            out[rows] = self._encode_batch([items[i] for i in rows], backbone)
        return out

    def write(self, fingerprint: dict[str, Any], keys: np.ndarray, vectors: np.ndarray) -> Path:
        """Store ``vectors`` (from :meth:`encode`) under ``keys`` as one new shard, atomically."""
        return self._open(fingerprint, create=True).write_shard(keys, np.asarray(vectors, self.dtype))

    def get_or_encode(self, items: Sequence[Item], backbone: Backbone, *, batch_size: int = 32,
                      tokens_per_batch: Optional[int] = None, progress: bool = True,
                      allow_encode: bool = True) -> tuple[np.ndarray, "EncodeStats"]:
        """Vectors of ``items`` (float32 ``[len(items), dim]``), encoding the unique items not
        cached yet. They come back as stored (fp16-rounded), so a fresh and a cached call return
        the same numbers. With ``allow_encode=False`` a missing item is an error."""
        start = time.perf_counter()
        folder, unique, keys, stats = self._fill(items, backbone, batch_size, tokens_per_batch, progress,
                                                 allow_encode, group=None)
        # Read back what was stored: the very numbers a later, cached call returns.
        found, vectors = folder.lookup(keys, backbone.dim)
        if not found.all():
            raise MicroRMError(f"{int((~found).sum())} vectors just written to "
                               f"{folder.path} cannot be read back; is the folder writable?")
        position = {item: i for i, item in enumerate(unique)}
        index = np.fromiter((position[item] for item in items), dtype=np.int64, count=len(items))
        return vectors[index], replace(stats, seconds=round(time.perf_counter() - start, 3))

    def fill(self, items: Sequence[Item], backbone: Backbone, *, batch_size: int = 32,
             tokens_per_batch: Optional[int] = None, progress: bool = True,
             allow_encode: bool = True, group: Optional["RankGroup"] = None) -> "EncodeStats":
        """Encode the unique ``items`` not cached yet; return the stats, not the vectors (memory
        stays proportional to a shard).

        With ``group`` (from :func:`~micro_rm.features.distributed.init_group`), every rank calls
        ``fill`` with the same items and encodes every ``world_size``-th batch of the same plan;
        the cache ends up as after a one-process run."""
        return self._fill(items, backbone, batch_size, tokens_per_batch, progress, allow_encode, group)[3]

    def _fill(self, items: Sequence[Item], backbone: Backbone, batch_size: int, tokens_per_batch: Optional[int],
              progress: bool, allow_encode: bool, group: Optional["RankGroup"]
              ) -> tuple[CacheFolder, list[Item], np.ndarray, "EncodeStats"]:
        """:meth:`fill`; also returns the backbone's folder, the unique ``items`` (first-seen order)
        and their keys."""
        start = time.perf_counter()
        check_batching(batch_size, tokens_per_batch)
        fingerprint = backbone.fingerprint()
        folder = self._open(fingerprint, create=allow_encode)
        unique = list(dict.fromkeys(items))
        keys = item_keys(fingerprint, unique)
        missing = np.flatnonzero(~folder.contains(keys))
        if group is not None:
            # One view of the cache for all ranks; no rank writes before every rank has it
            # (all_gather below cannot finish before each rank reached it).
            missing = group.broadcast(missing)
        if len(missing) and not allow_encode:
            raise MicroRMError(f"{len(missing)} of {len(unique)} texts are not in the cache at {folder.path}; "
                               "run `micro-rm encode --data FILE --backbone NAME` first or pass --backbone")
        todo = [unique[i] for i in missing]
        if group is None:
            lengths = backbone.token_lengths(todo)
        else:
            part = np.array_split(np.arange(len(todo)), group.world_size)[group.rank]
            mine = backbone.token_lengths([todo[i] for i in part])
            lengths = [n for share in group.all_gather(mine) for n in share]
        batches = plan_batches(lengths, batch_size=batch_size, tokens_per_batch=tokens_per_batch)
        if group is not None:
            batches = batches[group.rank::group.world_size]
        # No bar for nothing to encode (a warm cache); every rank agrees on ``missing``.
        encoded = self._encode(folder, todo, keys[missing], batches, backbone, progress) if len(missing) else 0
        if group is not None:
            encoded = sum(group.all_gather(encoded))  # waits for every rank's shards
        return folder, unique, keys, EncodeStats(texts=len(unique), encoded=encoded,
                                                 from_cache=len(unique) - len(missing),
                                                 seconds=round(time.perf_counter() - start, 3),
                                                 ranks=group.world_size if group else 1)

    def _encode(self, folder: CacheFolder, items: list[Item], keys: np.ndarray,
                batches: list[np.ndarray], backbone: Backbone, progress: bool) -> int:
        """Encode ``batches`` (index arrays into ``items``), flushing shards as it goes; returns
        the number of items encoded."""
        from micro_rm.progress import progress_bar
        pending: list[tuple[np.ndarray, np.ndarray]] = []   # (rows, stored vectors), not in a shard yet
        last_flush = time.monotonic()
        total = sum(len(b) for b in batches)

        def flush() -> None:
            nonlocal last_flush
            if pending:
                rows = np.concatenate([r for r, _ in pending])
                folder.write_shard(keys[rows], np.concatenate([v for _, v in pending]))
                pending.clear()
            last_flush = time.monotonic()

        bar = progress_bar(total=total, desc="encoding", unit="text",
                           enabled=progress, file=sys.stderr, dynamic_ncols=True)
        try:
            for rows in batches:
                pending.append((rows, self._encode_batch([items[i] for i in rows], backbone)))
                bar.update(len(rows))
                if (sum(len(r) for r, _ in pending) >= self.shard_size
                        or time.monotonic() - last_flush >= self.flush_seconds):
                    flush()
        finally:
            flush()  # keep finished work on Ctrl-C or a failing batch, too
            bar.close()
        return total

    def _encode_batch(self, batch_items: list[Item], backbone: Backbone) -> np.ndarray:
        """One backbone batch in the storage dtype; refuses a wrong shape or non-finite vectors."""
        batch = np.asarray(backbone.encode(batch_items), dtype=np.float32)
        if batch.shape != (len(batch_items), backbone.dim):
            raise MicroRMError(f"backbone {backbone.name} returned vectors of shape "
                               f"{batch.shape} for a batch of {len(batch_items)}; expected "
                               f"({len(batch_items)}, {backbone.dim})")
        with np.errstate(over="ignore"):  # overflow is reported just below
            stored = batch.astype(self.dtype)
        if not np.isfinite(stored).all():
            hint = (" in float16 storage; pass --storage float32"
                    if np.isfinite(batch).all() else "")
            raise MicroRMError(f"backbone {backbone.name} gave non-finite vectors{hint}")
        return stored


class ShardWriter:
    """Writes encoded vectors (:meth:`FeatureCache.encode`) to ``cache`` in a thread of its own,
    so a caller never waits for the disk.

    A shard is written once ``shard_size`` vectors are queued or the oldest has waited
    ``flush_seconds`` (few large shards: every lookup indexes every shard); until then
    :meth:`lookup` finds them. The thread is not a daemon, so exit waits for pending writes. A
    failed write is logged once and counted in ``stats``, never raised.

    >>> writer = ShardWriter(cache, backbone.fingerprint())    # doctest: +SKIP
    >>> writer.put(keys, cache.encode(items, backbone))        # doctest: +SKIP
    >>> writer.flush()                                         # doctest: +SKIP
    """

    def __init__(self, cache: FeatureCache, fingerprint: dict[str, Any]):
        self.cache = cache
        self.fingerprint = fingerprint
        self._queue: list[tuple[np.ndarray, np.ndarray]] = []
        self._oldest = 0.0                              # when the oldest of them was queued
        self._pending: dict[bytes, np.ndarray] = {}     # key -> stored vector, until written
        self._writing = False                           # a shard is being written
        self._flushing = 0                              # callers waiting in flush()
        self._alive = False                             # the thread runs
        self._done = threading.Condition()
        self._warned = False
        self.stats = {"disk_cache_written": 0, "disk_cache_write_failures": 0}

    def put(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Queue ``vectors`` [n, dim] (storage dtype) under ``keys`` [n, 32] for the next shard."""
        if not len(keys):
            return
        with self._done:
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append((keys, vectors))
            for key, vector in zip(keys, vectors):
                self._pending[key.tobytes()] = vector
            self._done.notify_all()
            if self._alive:
                return
            self._alive = True
        try:
            threading.Thread(target=self._run, name="micro-rm-cache-writer").start()
        except RuntimeError:   # no new threads at interpreter shutdown: write here
            self._alive = False
            self._drain()

    def lookup(self, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` rows whose key is queued or being written; the mask of rows filled."""
        found = np.zeros(len(keys), dtype=bool)
        with self._done:
            if not self._pending:
                return found
            for i, key in enumerate(keys):
                vector = self._pending.get(key.tobytes())
                if vector is not None:
                    out[i] = vector
                    found[i] = True
        return found

    def flush(self) -> None:
        """Write everything queued so far now, and wait until it is written (or has failed)."""
        with self._done:
            self._flushing += 1
            self._done.notify_all()
            try:
                self._done.wait_for(lambda: not self._queue and not self._writing)
            finally:
                self._flushing -= 1

    def _due(self, now: float, ending: bool) -> bool:
        queued = sum(len(keys) for keys, _ in self._queue)
        return bool(self._queue) and (ending or self._flushing > 0 or queued >= self.cache.shard_size
                                      or now - self._oldest >= self.cache.flush_seconds)

    def _run(self) -> None:
        # Stays _LINGER_SECONDS after the last write (starting a thread per shard cost ~2% of the
        # service's encode thread); writes everything and ends once the main thread has ended.
        while True:
            with self._done:
                idle_until = time.monotonic() + _LINGER_SECONDS
                while True:
                    now, ending = time.monotonic(), not threading.main_thread().is_alive()
                    if self._due(now, ending):
                        break
                    if not self._queue and (ending or now >= idle_until):
                        self._alive = False
                        return
                    self._done.wait(_POLL_SECONDS)
            self._drain()

    def _drain(self) -> None:
        """Write everything queued as one shard."""
        with self._done:
            work, self._queue = self._queue, []
            self._writing = True
        written = failed = 0
        keys = np.concatenate([k for k, _ in work]) if work else np.empty((0, 32), dtype=np.uint8)
        try:
            if work:
                self.cache.write(self.fingerprint, keys, np.concatenate([v for _, v in work]))
                written = len(keys)
        except Exception as exc:  # a full or read-only disk must not fail any request
            failed = len(keys)
            if not self._warned:
                self._warned = True
                log.warning("the feature cache at %s cannot be written (%s: %s); vectors are "
                            "served from memory and encoded again after a restart; further "
                            "failures are counted in /stats (disk_cache_write_failures)",
                            self.cache.root, type(exc).__name__, exc)
        finally:
            with self._done:
                self.stats["disk_cache_written"] += written
                self.stats["disk_cache_write_failures"] += failed
                for key in keys:
                    self._pending.pop(key.tobytes(), None)
                self._writing = False
                self._done.notify_all()


_LINGER_SECONDS = 5.0   # how long the writer thread waits for more work before it ends
_POLL_SECONDS = 0.05    # how often it looks at the clock and whether the main thread has ended
