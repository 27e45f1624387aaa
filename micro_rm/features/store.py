"""Pair features on disk: one ``.npy`` array (fp16 by default) per field of
:class:`~micro_rm.features.base.PairFeatures`, loaded memory-mapped, so training reads only the
rows of the current batch (layout: docs/scale-out.md). A folder is written under a temporary name
and renamed into place, so a killed writer never leaves a folder that loads.

>>> save_features(features, "dsp-features")                  # doctest: +SKIP
>>> mapped = load_features("dsp-features")                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.features.base import STORAGE_DTYPES, FeatureSettings, PairFeatures, recorded_encoding

__all__ = ["FeatureWriter", "check_destination", "load_features", "read_rows", "release_pages", "save_features"]

FORMAT = "micro-rm-pair-features"
VERSION = 1
ARRAYS = ("chosen", "rejected", "route")
CHUNK_ROWS = 65_536  # rows copied at once when saving a (possibly memory-mapped) source
# Rows read from a memory-mapped file between two page releases. Each random row read maps its
# 64 KiB neighbourhood (the kernel's fault-around), so this bounds the mapped pages per array
# to about PAGE_ROWS × 64 KiB (64 MiB), whatever the file size.
PAGE_ROWS = 1024


class FeatureWriter:
    """Fills a features folder a slice of rows at a time; :meth:`close` makes it appear (replacing
    one at ``path``). ``reward_dim`` / ``route_dim`` are the widths of ``chosen`` and ``route``;
    ``settings`` defaults to the defaults with the route layout ``context_dim`` implies.

    >>> with FeatureWriter("out", pairs=2, reward_dim=4, route_dim=4) as w:   # doctest: +SKIP
    ...     w.write(0, chosen, rejected, route)
    ...     w.close(prompts=["p", "q"])
    """

    def __init__(self, path: str | os.PathLike, *, pairs: int, reward_dim: int, route_dim: int,
                 fingerprint: Optional[dict[str, Any]] = None, dtype: str = "float16",
                 context_dim: int = 0, settings: Optional[FeatureSettings] = None):
        if dtype not in STORAGE_DTYPES:
            raise MicroRMError(f"feature storage dtype must be one of {', '.join(STORAGE_DTYPES)}, "
                               f"got {dtype!r}")
        if pairs < 1:
            raise MicroRMError(f"a features folder needs at least one pair, got {pairs}")
        self.path = check_destination(path)
        self.pairs, self.dtype = pairs, dtype
        self.fingerprint = dict(fingerprint or {})
        self.context_dim = context_dim
        self.settings = settings or FeatureSettings(context_encoding=recorded_encoding("", context_dim))
        self.tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        self.tmp.mkdir(parents=True)
        shapes = {"chosen": (pairs, reward_dim), "rejected": (pairs, reward_dim),
                  "route": (pairs, route_dim)}
        try:
            self.arrays = {name: np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+",
                                                           dtype=np.dtype(dtype), shape=shape)
                           for name, shape in shapes.items()}
        except BaseException:                 # e.g. a full disk: leave no half-made folder behind
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.closed = False

    def write(self, start: int, chosen: np.ndarray, rejected: np.ndarray, route: np.ndarray) -> None:
        """Put rows ``start : start + len(chosen)`` (any float dtype; cast to the storage dtype)."""
        stop = start + len(chosen)
        for name, rows in zip(ARRAYS, (chosen, rejected, route)):
            with np.errstate(over="ignore"):  # checked just below
                self.arrays[name][start:stop] = rows
            finite = np.isfinite(self.arrays[name][start:stop]).all()
            release_pages(self.arrays[name])  # written pages go to the page cache, not our RSS
            if not finite:
                raise MicroRMError(f"features.{name} rows {start}..{stop - 1} are not finite in "
                                   f"{self.dtype}; store them as float32")

    def close(self, prompts: Sequence[str], attributes: Sequence[Optional[str]] = ()) -> Path:
        """Write the row metadata, flush the arrays and rename the folder into place."""
        if len(prompts) != self.pairs or (attributes and len(attributes) != self.pairs):
            raise MicroRMError(f"{len(prompts)} prompts / {len(attributes)} attributes for "
                               f"{self.pairs} pairs")
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        for name, values in (("prompts", prompts), ("attributes", attributes)):
            (self.tmp / f"{name}.json").write_text(json.dumps(list(values), ensure_ascii=False), encoding="utf-8")
        meta = {"format": FORMAT, "version": VERSION, "pairs": self.pairs, "dtype": self.dtype,
                "fingerprint": self.fingerprint, "context_dim": self.context_dim,
                "context_encoding": self.settings.context_encoding, **self.settings.record()}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
        check_destination(self.path)   # again: the folder may have changed since __init__
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        self.closed = True
        return self.path

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.closed:   # drop the partial folder
            self.arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)


def check_destination(path: str | os.PathLike) -> Path:
    """``path`` if a features folder may be written there: new, an empty folder, or a features
    folder (which is replaced). Anything else is refused, never deleted; call it before long work,
    so a bad ``--out`` fails first.

    >>> check_destination("dsp-features")                      # doctest: +SKIP
    PosixPath('dsp-features')
    """
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    try:
        ok = json.loads((path / "meta.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise MicroRMError(f"{path} exists and is not a micro-rm features folder; "
                           "pick another path or delete it")
    return path


def save_features(features: PairFeatures, path: str | os.PathLike, *,
                  dtype: str = "float16") -> Path:
    """Write ``features`` into the folder ``path``, ``CHUNK_ROWS`` rows at a time (a
    memory-mapped source is never read whole)."""
    n = len(features)
    with FeatureWriter(path, pairs=n, reward_dim=features.chosen.shape[1],
                       route_dim=features.route.shape[1], fingerprint=features.fingerprint,
                       dtype=dtype, context_dim=features.context_dim, settings=features.settings) as writer:
        for start in range(0, n, CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            writer.write(start, features.chosen[start:stop], features.rejected[start:stop],
                         features.route[start:stop])
        return writer.close(features.prompts, features.attributes)


def load_features(path: str | os.PathLike, *, mmap: bool = True) -> PairFeatures:
    """Read a features folder; with ``mmap=True`` the arrays are read-only ``np.memmap`` views.

    >>> load_features("dsp-features").chosen.dtype               # doctest: +SKIP
    dtype('float16')
    """
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise MicroRMError(f"{path} is not a features folder (no meta.json); write one with "
                           "save_features() or `micro-rm encode --out`")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise MicroRMError(f"{meta_file}: format {meta.get('format')!r} version "
                           f"{meta.get('version')!r} is not one this micro-rm reads "
                           f"({FORMAT} ≤ {VERSION})")
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None)
              for name in ARRAYS}
    prompts = json.loads((path / "prompts.json").read_text(encoding="utf-8"))
    attributes = json.loads((path / "attributes.json").read_text(encoding="utf-8"))
    n = meta["pairs"]
    if any(len(a) != n for a in arrays.values()) or len(prompts) != n:
        raise MicroRMError(f"{path}: the arrays and prompts do not all hold {n} rows; "
                           "write the folder again")
    recorded = ("fingerprint", "context_dim", "context_encoding", "router_input", "context_in_reward")
    return PairFeatures(**arrays, prompts=prompts, attributes=attributes,   # older folders lack some: the defaults
                        **{name: meta[name] for name in recorded if name in meta})


def read_rows(array: np.ndarray, rows: np.ndarray, *, out: Optional[np.ndarray] = None,
              positions: Optional[np.ndarray] = None) -> np.ndarray:
    """``array[rows]`` in RAM, releasing a memory map's pages as it goes (:data:`PAGE_ROWS` rows
    at a time). Ascending ``rows`` read fastest.

    With ``out``, row ``rows[j]`` goes to ``out[positions[j]]`` (``positions`` defaults to
    ``j``), cast to ``out``'s dtype: gather, reorder and cast without a temporary copy.

    >>> read_rows(np.arange(6.0).reshape(3, 2), np.array([0, 2]))
    array([[0., 1.],
           [4., 5.]])
    """
    if out is None:
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    if positions is None:
        positions = np.arange(len(rows))
    for start in range(0, len(rows), PAGE_ROWS):
        out[positions[start:start + PAGE_ROWS]] = array[rows[start:start + PAGE_ROWS]]
        release_pages(array)
    return out


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped ``array`` from RSS (read pages stay there otherwise: one
    epoch over a 2.3 GB file would grow the process by 2.3 GB); the data stays in the page cache.
    Copy-on-write maps (their private changes would be lost) are left alone."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and getattr(array, "mode", None) in ("r", "r+", "w+") and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)
