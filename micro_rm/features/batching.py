"""The batching plan of an encode: which items share a backbone call, longest first."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError


def check_batching(batch_size: int, tokens_per_batch: Optional[int]) -> None:
    """Refuse a batch size or token budget below 1, naming the option."""
    if batch_size < 1:
        raise MicroRMError(f"--batch-size must be at least 1, got {batch_size}")
    if tokens_per_batch is not None and tokens_per_batch < 1:
        raise MicroRMError(f"--tokens-per-batch must be at least 1, got {tokens_per_batch}")


def plan_batches(lengths: Sequence[int] | np.ndarray, *, batch_size: int = 32,
                 tokens_per_batch: Optional[int] = None) -> list[np.ndarray]:
    """Batches of item indices, longest first: ``batch_size`` items each, or as many as fit
    ``items × longest ≤ tokens_per_batch`` (an item longer than that gets a batch of its own);
    an item shorter than half its batch's longest starts the next batch.

    Longest first: similar lengths share a batch (little padding), and a batch too big for memory
    fails in the first seconds. The half bounds padding to twice an item's length (it matters for
    the service's small micro-batches: benchmarks/serve.py), at the cost of at most
    log2(longest / shortest) more batches. A distributed encode deals out these same batches.

    >>> [b.tolist() for b in plan_batches([3, 9, 5, 1], batch_size=2)]
    [[1, 2], [0], [3]]
    >>> [b.tolist() for b in plan_batches([3, 9, 5, 1], tokens_per_batch=10)]
    [[1], [2, 0], [3]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, begin = [], 0
    while begin < len(order):
        longest = max(1, int(lengths[order[begin]]))
        size = batch_size if tokens_per_batch is None else max(1, tokens_per_batch // longest)
        candidates = lengths[order[begin:begin + size]]
        size = max(1, int(np.count_nonzero(2 * candidates >= longest)))   # a prefix: sorted longest first
        batches.append(order[begin:begin + size])
        begin += size
    return batches
