"""PKU-SafeRLHF (PKU-Alignment/PKU-SafeRLHF): two responses per prompt; only the safety preference
(``safer_response_id``) is used, as harmlessness data."""

from __future__ import annotations

from typing import Any

from micro_rm.data.builders._common import PairSink, need
from micro_rm.data.readers import read_rows
from micro_rm.errors import InvalidRecord

SCHEMA = "pku-saferlhf schema {prompt, response_0, response_1, safer_response_id}"


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """One pair per row: chosen = ``response_{safer_response_id}``, attribute = "harmless"."""
    sink = PairSink(source, skip_invalid)
    for i, (where, row) in enumerate(read_rows(source)):
        with sink.row():
            prompt = need(row, "prompt", where, SCHEMA)
            responses = (need(row, "response_0", where, SCHEMA),
                         need(row, "response_1", where, SCHEMA))
            safer = need(row, "safer_response_id", where, SCHEMA)
            if safer not in (0, 1):
                raise InvalidRecord(f"{where}: `safer_response_id` must be 0 or 1, got {safer!r}")
            sink.add({"prompt": prompt, "chosen": responses[safer],
                      "rejected": responses[1 - safer], "attribute": "harmless",
                      "id": f"pku-saferlhf-{i}"}, where, drop_degenerate=True)
    return sink.finish()
