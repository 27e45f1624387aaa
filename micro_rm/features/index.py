"""The index of one cache folder, rebuilt from the ``keys`` of its shards (no index file), so
shards written by another process or a killed run are found like any others."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.features.shards import SHARD_GLOB, Shard, write_shard
from micro_rm.features.store import read_rows

_STALE_TEMP_SECONDS = 3600.0  # a writer holds its temp file for the seconds one shard takes


class CacheFolder:
    """The shards of one backbone setting, and a thread-safe index over their keys: their sorted
    8-byte prefixes, the full 32 bytes confirmed on a hit (~50 bytes per item; a dict takes ~200)."""

    def __init__(self, path: Path):
        self.path = path
        self.shards: list[Shard] = []
        self._seen: set[str] = set()
        self._install(_index([]))   # the empty index; _add marks it _dirty
        self._lock = threading.RLock()

    def refresh(self) -> None:
        """Pick up shards written since the last look (by this or another process)."""
        now = time.time()
        for tmp in self.path.glob(".*.tmp"):
            try:  # a temp file this old belongs to a writer that died mid-shard
                if now - tmp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass
        for path in sorted(self.path.glob(SHARD_GLOB)):
            with self._lock:
                self._add(path)

    def _add(self, path: Path, shard: "Shard | None" = None) -> None:
        if path.name not in self._seen:
            self.shards.append(shard or Shard(path))
            self._seen.add(path.name)
            self._dirty = True

    def _install(self, index: tuple[np.ndarray, ...]) -> None:
        self._keys, self._shard_of, self._row_of, self._order, self._sorted_prefix = index
        self._dirty = False

    def _locate(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key in ``self._keys``; -1 where it is not cached."""
        self.refresh()
        if self._dirty:
            self._install(_index(self.shards))
        n = len(keys)
        where = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self._keys) == 0:
            return where
        query = _prefix(keys)
        lo = np.searchsorted(self._sorted_prefix, query, side="left")
        hi = np.searchsorted(self._sorted_prefix, query, side="right")
        candidates = np.flatnonzero(hi > lo)
        first = self._order[lo[candidates]]
        same = (self._keys[first] == keys[candidates]).all(axis=1)
        where[candidates[same]] = first[same]
        # A prefix shared by several keys: a (rare) 64-bit prefix collision. Equal keys from
        # two writers are harmless: the first candidate already matched.
        for i in candidates[~same & (hi[candidates] - lo[candidates] > 1)]:
            for pos in self._order[lo[i] + 1:hi[i]]:
                if np.array_equal(self._keys[pos], keys[i]):
                    where[i] = pos
                    break
        return where

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """``found [n] bool``, without reading any vector."""
        with self._lock:
            return self._locate(keys) >= 0

    def lookup(self, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(found [n] bool, vectors [n, dim] float32)``; rows not found are zero."""
        with self._lock:
            where = self._locate(keys)
            found = where >= 0
            vectors = np.zeros((len(keys), dim), dtype=np.float32)
            hits = np.flatnonzero(found)
            shard_of = self._shard_of[where[hits]]
            for s in np.unique(shard_of):
                shard = self.shards[s]
                if shard.shape[1] != dim:
                    raise MicroRMError(f"{shard.path}: vectors of dimension {shard.shape[1]}, the "
                                       f"backbone gives {dim}; delete the folder {self.path}")
                mine = hits[shard_of == s]
                rows = self._row_of[where[mine]]
                ascending = np.argsort(rows, kind="stable")   # file order; pages released as read
                vectors[mine[ascending]] = read_rows(shard.vectors, rows[ascending])
            return found, vectors

    def write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        """Write one shard and index it; lookups go on while the file is written."""
        path = write_shard(self.path, keys, vectors)
        shard = Shard(path)
        with self._lock:
            self._add(path, shard)
            shards = list(self.shards)
        index = _index(shards)   # built here, so the next lookup need not (the service's writer thread)
        with self._lock:
            if self._dirty and len(self.shards) == len(shards):
                self._install(index)
        return path


def _index(shards: list[Shard]) -> tuple[np.ndarray, ...]:
    """``(keys, shard_of, row_of, order, sorted_prefix)`` over ``shards``: every key, its shard and
    row, and the order that sorts the keys' 8-byte prefixes."""
    keys = np.concatenate([s.keys for s in shards]) if shards else np.empty((0, 32), dtype=np.uint8)
    sizes = [len(s.keys) for s in shards]
    shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), sizes)
    row_of = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if shards else np.empty(0, np.int64)
    prefix = _prefix(keys)
    order = np.argsort(prefix, kind="stable")
    return keys, shard_of, row_of, order, prefix[order]


def _prefix(keys: np.ndarray) -> np.ndarray:
    """First 8 bytes of each key as a big-endian uint64 (sorts like the bytes)."""
    return np.ascontiguousarray(keys[:, :8]).view(">u8").ravel().astype(np.uint64)
