"""Anthropic HH-RLHF: ``\\n\\nHuman: … \\n\\nAssistant: …`` transcripts split into a chat prompt and
the two final assistant replies.

Rows are the hub's ``{chosen, rejected}`` (``Anthropic/hh-rlhf``) or the DSP authors' cleaned
copies ``{text: [chosen, rejected], score}``; a folder is read as its ``*.cleaned-dsp.json`` files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

from micro_rm.data.builders._common import PairSink, need, source_files
from micro_rm.data.readers import read_rows
from micro_rm.data.records import Message
from micro_rm.errors import InvalidRecord

SCHEMA = "hh-rlhf schema {chosen, rejected} or {text: [chosen, rejected], score}"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}
ATTRIBUTES = ("helpful", "harmless")


def parse_turns(transcript: str) -> list[Message]:
    """Chat messages of an HH transcript.

    >>> parse_turns("\\n\\nHuman: Hi\\n\\nAssistant: Hello")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    """
    parts = _TURN.split(transcript)
    messages = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    messages += [{"role": _ROLES[role], "content": text.strip()}
                 for role, text in zip(parts[1::2], parts[2::2])]
    return messages


def split_transcripts(chosen: str, rejected: str, where: str) -> dict[str, Any]:
    """Prompt = the turns up to the last ``Assistant:`` marker both transcripts share; chosen /
    rejected = what follows (the *shared* marker keeps replies that invent ``Human:`` turns).

    >>> split_transcripts("\\n\\nHuman: Hi\\n\\nAssistant: Hello",
    ...                   "\\n\\nHuman: Hi\\n\\nAssistant: Go.", "x")
    {'prompt': [{'role': 'user', 'content': 'Hi'}], 'chosen': 'Hello', 'rejected': 'Go.'}
    """
    cut = os.path.commonprefix([chosen, rejected]).rfind(ASSISTANT)
    if cut < 0:
        raise InvalidRecord(f"{where}: the chosen and rejected transcripts share no "
                            "'\\n\\nAssistant:' turn, so the prompt cannot be split off")
    start = cut + len(ASSISTANT)
    return {"prompt": parse_turns(chosen[:cut]), "chosen": chosen[start:].strip(),
            "rejected": rejected[start:].strip()}


def _ordered_transcripts(row: Any, where: str) -> Optional[tuple[str, str]]:
    """(chosen, rejected) of either schema; None for a tie in the cleaned copies' scores."""
    if isinstance(row, dict) and "text" in row:
        text, score = row["text"], row.get("score") or [1.0, 0.0]
        if not (isinstance(text, list) and len(text) == 2 and len(score) == 2):
            raise InvalidRecord(f"{where}: `text` and `score` must be lists of two ({SCHEMA})")
        if score[0] == score[1]:
            return None
        return (text[0], text[1]) if score[0] > score[1] else (text[1], text[0])
    return need(row, "chosen", where, SCHEMA), need(row, "rejected", where, SCHEMA)


def _attribute_of(path: str) -> Optional[str]:
    name = Path(path).name.lower()
    found = [a for a in ATTRIBUTES if a in name]
    return found[0] if len(found) == 1 else None


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Pairs from an HH-RLHF file, hub id or folder; attribute = helpful / harmless when the file
    name says which. Pairs with an empty or identical final reply are dropped and counted.

    >>> pairs = build("../shared/data/hh-rlhf")  # doctest: +SKIP
    >>> pairs[0]["prompt"][0]["role"], pairs[0]["attribute"]  # doctest: +SKIP
    ('user', 'harmless')
    """
    sink = PairSink(source, skip_invalid)
    for path in source_files(source, "*.cleaned-dsp.json"):
        attribute = _attribute_of(path)
        stem = Path(path).name.split(".")[0]
        for i, (where, row) in enumerate(read_rows(path)):
            with sink.row():
                transcripts = _ordered_transcripts(row, where)
                if transcripts is None:
                    sink.dropped["a tied score"] += 1
                    continue
                record = split_transcripts(*transcripts, where)
                record.update(attribute=attribute, id=f"hh-{stem}-{i}")
                sink.add(record, where, drop_degenerate=True)
    return sink.finish()
