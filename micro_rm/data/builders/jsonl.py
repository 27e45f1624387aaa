"""A pair file already in the record schema (jsonl, json, parquet, csv or a dataset)."""

from __future__ import annotations

import os
from typing import Any

from micro_rm.data.readers import read_pairs


def build(source: str | os.PathLike, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Read and validate the records as they are.

    >>> build("pairs.jsonl")  # doctest: +SKIP
    [{'prompt': 'Hi', 'chosen': 'Hello!', 'rejected': 'Go away.'}]
    """
    return read_pairs(source, skip_invalid=skip_invalid)
