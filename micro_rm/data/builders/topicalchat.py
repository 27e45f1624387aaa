"""USR Topical-Chat ratings (Mehri & Eskenazi 2020, as packaged by UniEval): six responses per
dialogue rated on six attributes; per attribute, the higher-rated of two responses wins (the
HelpSteer2 analogue on local data). Ties are dropped."""

from __future__ import annotations

from typing import Any

from micro_rm.data.builders._common import PairSink, need, source_rows
from micro_rm.data.builders._ratings import RatedResponse, add_rated_pairs

SCHEMA = ("topicalchat schema {source, context, system_output, scores{understandability, "
          "naturalness, coherence, engagingness, groundedness, overall}}")

CONTEXTS = {
    "understandability": "I want replies that are easy to understand.",
    "naturalness": "I want replies that sound natural, like something a person would say.",
    "coherence": "I want replies that follow on coherently from what was said before.",
    "engagingness": "I want replies that are engaging and keep the conversation interesting.",
    "groundedness": "I want replies that bring in relevant facts and knowledge about the topic.",
    "overall": "I want the reply that is the best response overall.",
}
ATTRIBUTES = tuple(CONTEXTS)


def _history(source: str) -> str:
    """The dialogue history, one turn per line (the file pads turns with spaces and blank lines)."""
    return "\n".join(turn.strip() for turn in source.split("\n") if turn.strip())


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Pairs from ``topical_chat.json`` (or its folder); the prompt is the dialogue history (the
    knowledge fact is left out), attribute = the rated attribute, margin = the rating gap."""
    sink = PairSink(source, skip_invalid)
    dialogues: dict[str, list[RatedResponse]] = {}
    for where, row in source_rows(source, "*.json"):
        with sink.row():
            history = need(row, "source", where, SCHEMA)
            response = need(row, "system_output", where, SCHEMA)
            scores = need(row, "scores", where, SCHEMA)
            ratings = {a: float(need(scores, a, where, SCHEMA, prefix="scores."))
                       for a in ATTRIBUTES}
            dialogues.setdefault(history, []).append((where, response, ratings))
    for k, (history, responses) in enumerate(dialogues.items()):
        add_rated_pairs(sink, _history(history), responses, CONTEXTS, f"topicalchat-{k}")
    return sink.finish()
