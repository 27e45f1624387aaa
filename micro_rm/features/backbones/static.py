"""The ``static`` backbone: a token-embedding table distilled from the default backbone.

A text's vector is the mean of its tokens' rows (special tokens excluded): about a thousand texts
per second on two CPU cores, against about ten for the transformer. The table is distilled once
per machine (:mod:`.distill`) into ``$MICRO_RM_MODELS`` or the user cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from micro_rm.atomic import atomic_path
from micro_rm.features.base import Item
from micro_rm.features.backbones.items import pair_reward_item, pair_route_item, tokenize_items
from micro_rm.features.backbones.sources import (DEFAULT_MAX_LENGTH, DEFAULT_MODEL_ID, default_model_dir,
                                                 user_cache, weights_sha256)

log = logging.getLogger(__name__)

STATIC_DIM = 256
# Bump when the distillation recipe changes: the table file name (and the fingerprint) change.
RECIPE = "cls-token-sep/pca256/sif-zipf-3e-6/v2"


class StaticBackbone:
    """Mean of distilled token vectors; items are text pairs like the default backbone's."""

    name = "static"

    def __init__(self, table: np.ndarray, tokenizer: Any, *, max_length: int,
                 identity: dict[str, Any]):
        self.table = torch.from_numpy(table)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = table.shape[1]
        self.identity = identity
        self._special = np.array(sorted(tokenizer.all_special_ids))

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "static", "spec": {"name": self.name, "max_length": self.max_length},
                **self.identity, "pooling": "mean-non-special", "max_length": self.max_length,
                "truncation": "longest_first/right", "normalize": False}

    reward_item = staticmethod(pair_reward_item)
    route_item = staticmethod(pair_route_item)

    def _token_ids(self, items: Sequence[Item]) -> list[list[int]]:
        # Special tokens are counted for truncation (same cut as the default backbone) and
        # dropped from the mean.
        encodings = tokenize_items(self.tokenizer, items, max_length=self.max_length,
                                   add_special_tokens=True)
        return [e["input_ids"] for e in encodings]

    def token_lengths(self, items: Sequence[Item]) -> list[int]:
        return [len(ids) for ids in self._token_ids(items)]

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        ids = self._token_ids(items)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for row in ids for t in row), dtype=np.int64,
                           count=int(lengths.sum()))
        keep = ~np.isin(flat, self._special)
        bag = np.repeat(np.arange(len(ids)), lengths)[keep]                # bag of each kept token
        offsets = np.searchsorted(bag, np.arange(len(ids)))                # empty bags give zeros
        vectors = torch.nn.functional.embedding_bag(
            torch.from_numpy(flat[keep]), self.table, torch.from_numpy(offsets), mode="mean")
        return vectors.numpy()


def content_sha256(table: np.ndarray, vocabulary: dict[str, int]) -> str:
    """sha256 of the table's values, shape and dtype and of the tokenizer's vocabulary: unlike the
    file's bytes (its safetensors header order varies), the same on every machine.

    >>> content_sha256(np.zeros((2, 3), np.float32), {"a": 0, "b": 1})[:16]
    '1b4a9ced0d65e479'
    """
    values = np.ascontiguousarray(table, dtype=np.float32)
    digest = hashlib.sha256()
    digest.update(json.dumps({"shape": list(values.shape), "dtype": "float32",
                              "vocabulary": sorted(vocabulary.items())}, separators=(",", ":")).encode())
    digest.update(values.tobytes(order="C"))
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _read_table(path: str, size: int, mtime_ns: int, tokenizer_folder: str) -> tuple[np.ndarray, str]:
    # size and mtime are part of the key so that a rebuilt table is read (and hashed) again.
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer
    table = load_file(path)["table"]
    return table, content_sha256(table, AutoTokenizer.from_pretrained(tokenizer_folder).get_vocab())


def table_path(source_sha: str) -> Path:
    """Where the table distilled from weights ``source_sha`` with :data:`RECIPE` is kept."""
    recipe = RECIPE.replace("/", "-")
    return user_cache("MICRO_RM_MODELS", "models") / f"static-minilm-{source_sha[:16]}-{recipe}.safetensors"


def _distill_to(path: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import AutoModel, AutoTokenizer
    from micro_rm.features.backbones.distill import distill_static
    from micro_rm.progress import silence_transformers_bars

    log.warning("distilling the static backbone once into %s (under a minute)", path)
    folder = default_model_dir()
    silence_transformers_bars()
    model = AutoModel.from_pretrained(folder).eval()
    table = distill_static(model, AutoTokenizer.from_pretrained(folder), dim=STATIC_DIM)
    with atomic_path(path) as tmp:
        save_file({"table": table}, str(tmp), metadata={"source": DEFAULT_MODEL_ID,
                                                        "recipe": RECIPE})


def load_static(max_length: Optional[int]) -> StaticBackbone:
    """The static backbone, distilling its table first if this machine has none yet; its
    identity names the table by :func:`content_sha256`."""
    from transformers import AutoTokenizer
    folder = default_model_dir()
    source = weights_sha256(folder)
    path = table_path(source["model.safetensors"])
    if not path.exists():
        _distill_to(path)
    stat = path.stat()
    table, table_sha = _read_table(str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(folder))
    identity = {"source": DEFAULT_MODEL_ID, "source_weights_sha256": source, "recipe": RECIPE,
                "table_sha256": table_sha}
    return StaticBackbone(table, AutoTokenizer.from_pretrained(folder),
                          max_length=max_length or DEFAULT_MAX_LENGTH, identity=identity)
