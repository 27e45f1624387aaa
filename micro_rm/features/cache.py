"""The feature cache: every unique item is encoded once per backbone setting and kept on disk.

Layout (one folder per backbone setting, so two settings can never read each other's vectors)::

    root/<fingerprint_id>/fingerprint.json              the backbone setting, checked on open
    root/<fingerprint_id>/shard-<time>-<pid>-<rand>.safetensors
                                                        keys    uint8 [n, 32]  sha256 digests
                                                        vectors fp16/fp32 [n, d]

The key of an item is ``sha256(canonical JSON of the fingerprint, item)``. A shard is written to
a temporary name and renamed into place, so a killed run keeps every finished shard and never
leaves a half-written one; shard names are unique per writer, so several processes (the ranks of
a distributed encode) can fill one folder at the same time. The index is rebuilt from the
``keys`` of the shards; vectors are memory-mapped and only the rows asked for are read.

>>> cache = FeatureCache("features")                                 # doctest: +SKIP
>>> vectors, stats = cache.get_or_encode([("Hi", "Hello!")], backbone)  # doctest: +SKIP
>>> stats.encoded, vectors.shape                                     # doctest: +SKIP
(1, (1, 384))
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from micro_rm.atomic import atomic_open, atomic_path, check_output_path
from micro_rm.errors import MicroRMError
from micro_rm.features.backbones import fingerprint_id
from micro_rm.features.base import Backbone, Item

if TYPE_CHECKING:
    from micro_rm.features.distributed import RankGroup

STORAGE_DTYPES = ("float16", "float32")
SHARD_GLOB = "shard-*.safetensors"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32}
_STALE_TEMP_SECONDS = 3600.0  # a writer holds its temp file for the seconds one shard takes


@dataclass
class EncodeStats:
    """What one :meth:`FeatureCache.get_or_encode` call did."""

    texts: int          # unique items asked for
    encoded: int        # of those, run through the backbone now
    from_cache: int     # of those, read from the cache
    seconds: float      # wall time of the call
    ranks: int = 1      # processes that shared the encoding (torchrun / accelerate launch)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def item_keys(fingerprint: dict[str, Any], items: Sequence[Item]) -> np.ndarray:
    """Cache keys of ``items`` under ``fingerprint``: raw sha256 digests, uint8 ``[n, 32]``.

    >>> item_keys({"model": "m"}, [("Hi", None)]).shape
    (1, 32)
    """
    prefix = hashlib.sha256(canonical_json(fingerprint).encode() + b"\x00")
    keys = np.empty((len(items), 32), dtype=np.uint8)
    for i, item in enumerate(items):
        h = prefix.copy()
        h.update(canonical_json(list(item)).encode())
        keys[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return keys


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return header, 8 + size


class _Shard:
    """One finished shard file: its keys in RAM, its vectors memory-mapped on first use."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            with safe_open(str(path), framework="numpy") as fh:
                self.keys = fh.get_tensor("keys")
            header, data_start = _read_header(path)
            spec = header["vectors"]
            self.dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            self.shape = tuple(spec["shape"])
            self.offset = data_start + spec["data_offsets"][0]
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise MicroRMError(f"{path}: unreadable feature shard ({type(exc).__name__}: {exc}); "
                               "delete it and its texts will be encoded again") from None
        if self.keys.shape != (self.shape[0], 32):
            raise MicroRMError(f"{path}: {self.keys.shape[0]} keys for {self.shape[0]} vectors; "
                               "delete it and its texts will be encoded again")
        self._vectors: Optional[np.memmap] = None

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.memmap(self.path, dtype=self.dtype, mode="r",
                                      offset=self.offset, shape=self.shape)
        return self._vectors


class _Folder:
    """The shards of one backbone setting, and a sorted index over their keys.

    The index sorts the first 8 bytes of every key (as uint64) and confirms the full 32 bytes
    on a hit: about 50 bytes per cached item, where a dict of digests would take ~200.
    """

    def __init__(self, path: Path):
        self.path = path
        self.shards: list[_Shard] = []
        self._seen: set[str] = set()
        self._dirty = True
        self._sorted_prefix = np.empty(0, dtype=np.uint64)
        self._order = np.empty(0, dtype=np.int64)
        self._keys = np.empty((0, 32), dtype=np.uint8)
        self._shard_of = np.empty(0, dtype=np.int32)
        self._row_of = np.empty(0, dtype=np.int64)

    def check_fingerprint(self, fingerprint: dict[str, Any], create: bool) -> bool:
        """Refuse a folder written by another setting; write ``fingerprint.json`` if asked.
        Returns whether the folder exists."""
        file = self.path / "fingerprint.json"
        expected = json.loads(canonical_json(fingerprint))
        if file.exists():
            try:
                stored = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
                raise MicroRMError(f"{file}: unreadable ({exc}); delete the folder {self.path} "
                                   "to encode again") from None
            if canonical_json(stored) != canonical_json(expected):
                raise MicroRMError(
                    f"cache folder {self.path} was written by backbone setting "
                    f"{canonical_json(stored)}, not {canonical_json(expected)}; "
                    "delete the folder or use another --cache")
            return True
        if not create:
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_open(file) as fh:
            fh.write(json.dumps(expected, indent=2, sort_keys=True) + "\n")
        return True

    def refresh(self) -> None:
        """Pick up shards written since the last look (by this or another process)."""
        if not self.path.is_dir():
            return
        now = time.time()
        for tmp in self.path.glob(".*.tmp"):
            try:  # a temp file this old belongs to a writer that died mid-shard
                if now - tmp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass
        for path in sorted(self.path.glob(SHARD_GLOB)):
            if path.name not in self._seen:
                self.shards.append(_Shard(path))
                self._seen.add(path.name)
                self._dirty = True

    def _rebuild(self) -> None:
        if not self._dirty:
            return
        sizes = [len(s.keys) for s in self.shards]
        if self.shards:
            self._keys = np.concatenate([s.keys for s in self.shards])
            self._shard_of = np.repeat(np.arange(len(self.shards), dtype=np.int32), sizes)
            self._row_of = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
        prefix = _prefix(self._keys)
        self._order = np.argsort(prefix, kind="stable")
        self._sorted_prefix = prefix[self._order]
        self._dirty = False

    def _locate(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key in ``self._keys``; -1 where it is not cached."""
        self.refresh()
        self._rebuild()
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
        return self._locate(keys) >= 0

    def lookup(self, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``(found [n] bool, vectors [n, dim] float32)``; rows not found are zero."""
        from micro_rm.features.store import read_rows

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
        """Write one shard atomically under a name no other writer can pick."""
        from safetensors.numpy import save_file

        name = f"shard-{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        path = self.path / name
        with atomic_path(path) as tmp:
            save_file({"keys": np.ascontiguousarray(keys, dtype=np.uint8),
                       "vectors": np.ascontiguousarray(vectors)}, str(tmp),
                      metadata={"format": "micro-rm-features", "count": str(len(keys))})
        self.shards.append(_Shard(path))
        self._seen.add(name)
        self._dirty = True
        return path


def _prefix(keys: np.ndarray) -> np.ndarray:
    """First 8 bytes of each key as a big-endian uint64 (sorts like the bytes)."""
    return np.ascontiguousarray(keys[:, :8]).view(">u8").ravel().astype(np.uint64)


def plan_batches(lengths: Sequence[int] | np.ndarray, *, batch_size: int = 32,
                 tokens_per_batch: Optional[int] = None) -> list[np.ndarray]:
    """Batches of item indices, longest items first: ``batch_size`` items each, or (with
    ``tokens_per_batch``) as many items as fit ``tokens_per_batch`` padded tokens, i.e.
    ``items × longest ≤ tokens_per_batch`` (an item longer than that gets a batch of its own).

    Longest first: similar lengths share a batch (little padding), and a batch too big for
    memory fails in the first seconds rather than at the end. A distributed encode deals these
    same batches out to its ranks, so every vector is computed in exactly the batch a
    one-process run would use.

    >>> [b.tolist() for b in plan_batches([3, 9, 5, 1], batch_size=2)]
    [[1, 2], [0, 3]]
    >>> [b.tolist() for b in plan_batches([3, 9, 5, 1], tokens_per_batch=10)]
    [[1], [2, 0], [3]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    if tokens_per_batch is None:
        return [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    batches, begin = [], 0
    while begin < len(order):
        size = max(1, tokens_per_batch // max(1, int(lengths[order[begin]])))
        batches.append(order[begin:begin + size])
        begin += size
    return batches


def default_cache_root() -> Path:
    """``$MICRO_RM_CACHE``, else ``<user cache dir>/micro-rm/features``."""
    env = os.environ.get("MICRO_RM_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("micro-rm")) / "features"


class FeatureCache:
    """Backbone vectors on disk, keyed by (backbone fingerprint, item).

    Parameters
    ----------
    root : folder holding one sub-folder per backbone setting (default: :func:`default_cache_root`).
    dtype : storage precision of new shards, ``"float16"`` (half the disk; vectors round-trip
        within fp16 precision) or ``"float32"`` (exact).
    shard_size : new vectors are flushed to a shard every ``shard_size`` items ...
    flush_seconds : ... or every ``flush_seconds``, so an interrupted run loses little.

    Examples
    --------
    >>> cache = FeatureCache(tmp_dir, dtype="float32")              # doctest: +SKIP
    >>> vectors, stats = cache.get_or_encode(items, backbone)        # doctest: +SKIP
    >>> cache.get_or_encode(items, backbone)[1].encoded              # doctest: +SKIP
    0
    """

    def __init__(self, root: str | os.PathLike | None = None, dtype: str = "float16", *,
                 shard_size: int = 2048, flush_seconds: float = 60.0):
        if dtype not in STORAGE_DTYPES:
            raise MicroRMError(f"cache storage dtype (--storage) must be one of "
                               f"{', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        if shard_size < 1:
            raise MicroRMError(f"shard_size must be at least 1, got {shard_size}")
        # A file in the way is refused here, not at the first write (a 500 in the service).
        self.root = check_output_path(root if root is not None else default_cache_root(),
                                      "feature cache (--cache)", folder=True, writable=False)
        self.dtype = dtype
        self.shard_size = shard_size
        self.flush_seconds = flush_seconds
        self._folders: dict[str, _Folder] = {}

    def folder(self, fingerprint: dict[str, Any]) -> Path:
        """Where the vectors of this backbone setting live."""
        return self.root / fingerprint_id(fingerprint)

    def _open(self, fingerprint: dict[str, Any], create: bool) -> _Folder:
        path = self.folder(fingerprint)
        folder = self._folders.get(path.name) or _Folder(path)
        # Checked on every call: another process may have written the folder meanwhile.
        if folder.check_fingerprint(fingerprint, create):
            self._folders[path.name] = folder
        return folder

    def _prepare(self, items: Sequence[Item], backbone: Backbone, batch_size: int,
                 tokens_per_batch: Optional[int], allow_encode: bool
                 ) -> tuple[_Folder, list[Item], np.ndarray]:
        """What ``get_or_encode`` and ``fill`` start from: the backbone's folder, the unique
        ``items`` in first-seen order and their keys (after checking the batching options)."""
        _check_batching(batch_size, tokens_per_batch)
        fingerprint = backbone.fingerprint()
        folder = self._open(fingerprint, create=allow_encode)
        unique = list(dict.fromkeys(items))
        return folder, unique, item_keys(fingerprint, unique)

    def lookup(self, keys: np.ndarray, fingerprint: dict[str, Any], dim: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors for ``keys`` (from :func:`item_keys`): ``(found_mask, vectors)``,
        vectors float32 ``[n, dim]`` with zero rows where nothing was found."""
        return self._open(fingerprint, create=False).lookup(np.asarray(keys, np.uint8), dim)

    def get_or_encode(self, items: Sequence[Item], backbone: Backbone, *, batch_size: int = 32,
                      tokens_per_batch: Optional[int] = None, progress: bool = True,
                      allow_encode: bool = True) -> tuple[np.ndarray, "EncodeStats"]:
        """Vectors of ``items`` (float32 ``[len(items), dim]``, duplicates included), encoding
        only the unique items that are not cached yet, longest first, in the batches of
        :func:`plan_batches`.

        Vectors come back as stored (fp16-rounded with ``dtype="float16"``), so a fresh and a
        cached call return the same numbers. With ``allow_encode=False`` a missing item is an
        error that says how to fill the cache.
        """
        start = time.perf_counter()
        folder, unique, keys = self._prepare(items, backbone, batch_size, tokens_per_batch, allow_encode)
        found, vectors = folder.lookup(keys, backbone.dim)
        missing = np.flatnonzero(~found)
        if len(missing) and not allow_encode:
            raise _missing_error(len(missing), len(unique), folder)
        if len(missing):
            todo = [unique[i] for i in missing]
            batches = plan_batches(backbone.token_lengths(todo), batch_size=batch_size,
                                   tokens_per_batch=tokens_per_batch)
            self._encode(folder, todo, keys[missing], batches, backbone, progress)
            # Read back what was stored: the very numbers a later, cached call returns.
            again, vectors[missing] = folder.lookup(keys[missing], backbone.dim)
            if not again.all():
                raise MicroRMError(f"{int((~again).sum())} vectors just written to "
                                   f"{folder.path} cannot be read back; is the folder writable?")
        position = {item: i for i, item in enumerate(unique)}
        index = np.fromiter((position[item] for item in items), dtype=np.int64, count=len(items))
        stats = EncodeStats(texts=len(unique), encoded=len(missing),
                            from_cache=len(unique) - len(missing),
                            seconds=round(time.perf_counter() - start, 3))
        return vectors[index], stats

    def fill(self, items: Sequence[Item], backbone: Backbone, *, batch_size: int = 32,
             tokens_per_batch: Optional[int] = None, progress: bool = True,
             allow_encode: bool = True, group: Optional["RankGroup"] = None) -> "EncodeStats":
        """Encode the unique ``items`` that are not cached yet; return what was done, not the
        vectors (memory stays proportional to a shard, however many items there are).

        With ``group`` (the ranks of a ``torchrun`` / ``accelerate launch`` job, from
        :func:`micro_rm.features.distributed.init_group`), every rank calls ``fill`` with the same
        items: rank 0's list of missing items is shared, the ranks measure its token lengths a
        slice each, every rank plans the same :func:`plan_batches` and encodes every
        ``world_size``-th batch into shards of its own. The stats count the whole job, and the
        cache ends up with the same vectors under the same keys as a one-process run.

        >>> cache.fill(items, backbone).encoded                   # doctest: +SKIP
        5883
        """
        start = time.perf_counter()
        folder, unique, keys = self._prepare(items, backbone, batch_size, tokens_per_batch, allow_encode)
        missing = np.flatnonzero(~folder.contains(keys))
        if group is not None:
            # One view of the cache for all ranks; no rank writes before every rank has it
            # (all_gather below cannot finish before each rank reached it).
            missing = group.broadcast(missing)
        if len(missing) and not allow_encode:
            raise _missing_error(len(missing), len(unique), folder)
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
        encoded = self._encode(folder, todo, keys[missing], batches, backbone, progress)
        ranks = 1
        if group is not None:
            encoded, ranks = group.sum(encoded), group.world_size  # waits for every rank's shards
        return EncodeStats(texts=len(unique), encoded=encoded,
                           from_cache=len(unique) - len(missing),
                           seconds=round(time.perf_counter() - start, 3), ranks=ranks)

    def _encode(self, folder: _Folder, items: list[Item], keys: np.ndarray,
                batches: list[np.ndarray], backbone: Backbone, progress: bool) -> int:
        """Encode ``batches`` (index arrays into ``items``, all missing), flushing shards as it
        goes; returns the number of items encoded. Holds at most one shard's vectors."""
        from tqdm.auto import tqdm

        storage = np.dtype(self.dtype)
        pending: list[tuple[np.ndarray, np.ndarray]] = []   # (rows, stored vectors), not in a shard yet
        last_flush = time.monotonic()
        done = 0

        def flush() -> None:
            nonlocal last_flush
            if pending:
                rows = np.concatenate([r for r, _ in pending])
                folder.write_shard(keys[rows], np.concatenate([v for _, v in pending]))
                pending.clear()
            last_flush = time.monotonic()

        bar = tqdm(total=sum(len(b) for b in batches), desc="encoding", unit="text",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            for rows in batches:
                batch = np.asarray(backbone.encode([items[i] for i in rows]), dtype=np.float32)
                if batch.shape != (len(rows), backbone.dim):
                    raise MicroRMError(f"backbone {backbone.name} returned vectors of shape "
                                       f"{batch.shape} for a batch of {len(rows)}; expected "
                                       f"({len(rows)}, {backbone.dim})")
                with np.errstate(over="ignore"):  # overflow is reported just below
                    stored = batch.astype(storage)
                if not np.isfinite(stored).all():
                    hint = (" in float16 storage; pass --storage float32"
                            if np.isfinite(batch).all() else "")
                    raise MicroRMError(f"backbone {backbone.name} gave non-finite vectors{hint}")
                pending.append((rows, stored))
                done += len(rows)
                bar.update(len(rows))
                if (sum(len(r) for r, _ in pending) >= self.shard_size
                        or time.monotonic() - last_flush >= self.flush_seconds):
                    flush()
        finally:
            flush()  # keep finished work on Ctrl-C or a failing batch, too
            bar.close()
        return done


def _check_batching(batch_size: int, tokens_per_batch: Optional[int]) -> None:
    if batch_size < 1:
        raise MicroRMError(f"--batch-size must be at least 1, got {batch_size}")
    if tokens_per_batch is not None and tokens_per_batch < 1:
        raise MicroRMError(f"--tokens-per-batch must be at least 1, got {tokens_per_batch}")


def _missing_error(missing: int, unique: int, folder: _Folder) -> MicroRMError:
    return MicroRMError(
        f"{missing} of {unique} texts are not in the cache at {folder.path}; run "
        "`micro-rm encode --data FILE --backbone NAME` first or pass --backbone")
