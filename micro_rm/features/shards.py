"""The feature cache's on-disk format: item keys and shard files.

One folder per backbone setting, ``root/<fingerprint_id>/``, holding ``fingerprint.json`` (checked
on open) and ``shard-<time>-<pid>-<rand>.safetensors`` files (``keys`` uint8 [n, 32], ``vectors``
[n, d]). A shard is written under a temporary name and renamed into place, and its name is unique
per writer, so several processes can fill one folder and a killed run leaves no half shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.atomic import atomic_open, atomic_path
from micro_rm.errors import MicroRMError
from micro_rm.features.base import Item

SHARD_GLOB = "shard-*.safetensors"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32}


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


def check_fingerprint(folder: Path, fingerprint: dict[str, Any], create: bool) -> bool:
    """Whether the folder exists; refuses one written by another setting, creates it if asked."""
    file = folder / "fingerprint.json"
    if file.exists():
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
            raise MicroRMError(f"{file}: unreadable ({exc}); delete the folder {folder} "
                               "to encode again") from None
        if canonical_json(stored) != canonical_json(fingerprint):
            raise MicroRMError(
                f"cache folder {folder} was written by backbone setting "
                f"{canonical_json(stored)}, not {canonical_json(fingerprint)}; "
                "delete the folder or use another --cache")
        return True
    if not create:
        return False
    with atomic_open(file) as fh:
        fh.write(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    return True


class Shard:
    """One finished shard file: its keys in RAM, its vectors memory-mapped on first use."""

    def __init__(self, path: Path):
        from safetensors import safe_open
        self.path = path
        try:
            with safe_open(str(path), framework="numpy") as fh:
                self.keys = fh.get_tensor("keys")
            with open(path, "rb") as fh:   # safetensors: an 8-byte header size, the JSON header, the data
                (size,) = struct.unpack("<Q", fh.read(8))
                spec = json.loads(fh.read(size))["vectors"]
            self.dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            self.shape = tuple(spec["shape"])
            self.offset = 8 + size + spec["data_offsets"][0]
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


def write_shard(folder: Path, keys: np.ndarray, vectors: np.ndarray) -> Path:
    """Write one shard into ``folder`` atomically, under a name no other writer can pick."""
    from safetensors.numpy import save_file
    path = folder / f"shard-{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
    with atomic_path(path) as tmp:
        save_file({"keys": np.ascontiguousarray(keys, dtype=np.uint8),
                   "vectors": np.ascontiguousarray(vectors)}, str(tmp),
                  metadata={"format": "micro-rm-features", "count": str(len(keys))})
    return path
