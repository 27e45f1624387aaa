"""The canonical split by prompt hash (../shared/data/README.md), so no test prompt is trained on."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Literal, get_args

from micro_rm.data.records import prompt_key
from micro_rm.errors import MicroRMError

Split = Literal["train", "test", "all"]
SPLITS = get_args(Split)
TRAIN_BUCKETS = range(0, 7)  # buckets 0-6 train, 7-9 test


def prompt_bucket(prompt: str) -> int:
    """``int(sha256(prompt).hexdigest()[:8], 16) % 10``.

    >>> prompt_bucket("Name three methods to reduce greenhouse gas emissions.") in range(10)
    True
    """
    return int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) % 10


def split_of(record: dict[str, Any]) -> str:
    """``"train"`` or ``"test"`` for one record, from its prompt."""
    return "train" if prompt_bucket(prompt_key(record)) in TRAIN_BUCKETS else "test"


def select_split(records: Iterable[dict[str, Any]], split: Split) -> list[dict[str, Any]]:
    """Keep the records of one canonical split (``"all"`` keeps everything)."""
    if split not in SPLITS:
        raise MicroRMError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return list(records) if split == "all" else [r for r in records if split_of(r) == split]
