"""HHH alignment (Askell et al. 2021, BIG-bench), normalised to {category, prompt, chosen,
rejected}: a tiny per-attribute check (helpful, honest, harmless, other)."""

from __future__ import annotations

from typing import Any

from micro_rm.data.builders._common import PairSink, need, source_rows

SCHEMA = "hhh schema {category, prompt, chosen, rejected}"


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Pairs from ``hhh_alignment.normalized.jsonl`` (or its folder); attribute = category."""
    sink = PairSink(source, skip_invalid)
    for i, (where, row) in enumerate(source_rows(source, "*.jsonl")):
        with sink.row():
            attribute = need(row, "category", where, SCHEMA)
            pair = {k: need(row, k, where, SCHEMA) for k in ("prompt", "chosen", "rejected")}
            sink.add({**pair, "attribute": attribute, "id": f"hhh-{row.get('id', i)}"}, where)
    return sink.finish()
