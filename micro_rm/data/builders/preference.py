"""Generic chosen / rejected datasets: hendrydong/preference_700K and RLHFlow's format (whole
conversations, ``chosen_score`` / ``rejected_score``), UltraFeedback-binarized rows (a ``prompt``
plus conversations, ``score_chosen`` / ``score_rejected``) and plain ``{prompt, chosen, rejected}``."""

from __future__ import annotations

from typing import Any

from micro_rm.data.builders._common import PairSink, need
from micro_rm.data.readers import read_rows

SCHEMA = "preference schema {chosen, rejected, prompt (unless both are conversations)}"
_SCORE_COLUMNS = (("chosen_score", "rejected_score"), ("score_chosen", "score_rejected"))


def to_pair(row: Any, where: str) -> dict[str, Any]:
    """The pair record of one row; conversations that start alike ignore a ``prompt`` column
    (their shared prefix is the prompt).

    >>> u = {"role": "user", "content": "Hi"}
    >>> to_pair({"prompt": "Hi", "chosen": [u, {"role": "assistant", "content": "Hello"}],
    ...          "rejected": [u, {"role": "assistant", "content": "No"}], "chosen_score": 2,
    ...          "rejected_score": 1}, "x")["margin"]
    1.0
    """
    chosen, rejected = need(row, "chosen", where, SCHEMA), need(row, "rejected", where, SCHEMA)
    record: dict[str, Any] = {"chosen": chosen, "rejected": rejected}
    conversations = isinstance(chosen, list) and isinstance(rejected, list)
    if not (conversations and chosen and rejected and chosen[0] == rejected[0]):
        record["prompt"] = need(row, "prompt", where, SCHEMA)
    for high, low in _SCORE_COLUMNS:  # the first pair of numeric score columns gives the margin
        a, b = row.get(high), row.get(low)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            record["margin"] = float(a - b)
            break
    return record


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Pairs from any chosen / rejected dataset (hub id, file or folder).

    >>> build("hendrydong/preference_700K")[0]["prompt"][0]["role"]  # doctest: +SKIP
    'user'
    """
    sink = PairSink(source, skip_invalid)
    for where, row in read_rows(source):
        with sink.row():
            sink.add(to_pair(row, where), where)
    return sink.finish()
