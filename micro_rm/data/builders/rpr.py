"""Reasonable Preference Reversal (microsoft/rpr, Pitis et al. 2024): each row holds two
responses and two criteria; under criterion x response a wins, under criterion y response b.
"""

from __future__ import annotations

from typing import Any

from micro_rm.data.builders._common import PairSink, need
from micro_rm.data.readers import read_rows

FIELDS = ("prompt", "response_a", "response_b", "criteria_x", "criteria_y", "category_x",
          "category_y")
SCHEMA = "rpr schema {" + ", ".join(FIELDS) + "}"


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Two pairs per row with opposite labels: (a over b, context = criteria_x, attribute =
    category_x) and (b over a, context = criteria_y, attribute = category_y)."""
    sink = PairSink(source, skip_invalid)
    for i, (where, row) in enumerate(read_rows(source)):
        with sink.row():
            f = {k: need(row, k, where, SCHEMA) for k in FIELDS}
            row_id = row.get("id", i)
            for side, chosen, rejected in (("x", "response_a", "response_b"),
                                           ("y", "response_b", "response_a")):
                sink.add({"prompt": f["prompt"], "chosen": f[chosen], "rejected": f[rejected],
                          "context": f[f"criteria_{side}"], "attribute": f[f"category_{side}"],
                          "id": f"rpr-{row_id}-{side}"}, where)
    return sink.finish()
