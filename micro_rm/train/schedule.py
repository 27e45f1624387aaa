"""Learning-rate schedule: linear warm-up, then linear decay to zero (the Hugging Face default)."""

from __future__ import annotations


def lr_at(step: int, total: int, warmup: int) -> float:
    """Fraction of the peak learning rate for optimizer step ``step`` (0-based) of ``total``.

    Rises linearly over the first ``warmup`` steps to 1, then falls linearly so that the step
    after the last would have rate 0. Every step gets a positive rate.

    >>> [round(lr_at(s, total=6, warmup=2), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup:
        return (step + 1) / warmup
    return (total - step) / max(total - warmup, 1)
