"""PandaLM human test set (Wang et al. 2023): three fixed annotators label each response pair
(1 or 2 = that response is better, 0 = tie). Each annotator is a user, so per-user accuracy and
per-user adaptation can be measured."""

from __future__ import annotations

import math
from typing import Any, Optional

from micro_rm.data.builders._common import PairSink, need, source_rows
from micro_rm.errors import InvalidRecord

ANNOTATORS = ("annotator1", "annotator2", "annotator3")
SCHEMA = ("pandalm schema {idx, motivation_app, instruction, input, response1, response2, "
          "annotator1, annotator2, annotator3}")


def _text(value: Any) -> Optional[str]:
    """A text cell, or None when it is missing, NaN (the file has bare NaN) or blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """One pair per annotator who preferred a side; ties and pairs with an empty response are
    dropped. prompt = instruction, then the input after a blank line when there is one;
    ``user_id`` = ``attribute`` = the annotator."""
    sink = PairSink(source, skip_invalid)
    for i, (where, row) in enumerate(source_rows(source, "*.json")):
        with sink.row():
            instruction = need(row, "instruction", where, SCHEMA)
            prompt = "\n\n".join(p for p in (_text(instruction), _text(row.get("input"))) if p)
            responses = {1: _text(need(row, "response1", where, SCHEMA)),
                         2: _text(need(row, "response2", where, SCHEMA))}
            for annotator in ANNOTATORS:
                label = need(row, annotator, where, SCHEMA)
                if label == 0:
                    sink.dropped["a tie"] += 1
                    continue
                if label not in (1, 2):
                    raise InvalidRecord(f"{where}: `{annotator}` must be 0 (tie), 1 or 2, "
                                        f"got {label!r}")
                sink.add({"prompt": prompt,
                          "chosen": responses[label], "rejected": responses[3 - label],
                          "user_id": annotator, "attribute": annotator,
                          "id": f"pandalm-{row.get('idx', i)}-{annotator}"},
                         where, drop_degenerate=True)
    return sink.finish()
