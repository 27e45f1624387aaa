"""``micro-rm data inspect``: what is in a pair file before anyone trains on it. Unlike
``read_pairs`` it does not stop at the first bad record: it counts the problems and shows the
first few, next to counts, lengths and duplicates of the valid pairs."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from typing import Any

from micro_rm.data.readers import read_rows
from micro_rm.data.records import IdenticalPair, normalize_pair, prompt_key, render_text
from micro_rm.data.split import split_of
from micro_rm.errors import InvalidRecord

MAX_PROBLEMS = 20
TOP = 20
NONE = "(none)"


def _top(counter: Counter[str]) -> dict[str, Any]:
    return {"distinct": len(counter), "top": [[k, n] for k, n in counter.most_common(TOP)]}


def _lengths(values: list[int]) -> dict[str, float] | None:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else None


def inspect_pairs(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise a pair file: counts per attribute / context / user, lengths in characters,
    duplicate and identical pairs, and validation problems (counted, not raised).

    >>> s = inspect_pairs("pairs.jsonl")  # doctest: +SKIP
    >>> s["pairs"], s["attributes"], s["problems"]["count"]  # doctest: +SKIP
    (2, {'helpful': 2}, 0)
    """
    records, problems, identical, first_problems = [], 0, 0, []
    for where, row in read_rows(path):
        try:
            records.append(normalize_pair(row, where))
        except InvalidRecord as exc:
            problems += 1
            identical += isinstance(exc, IdenticalPair)
            if len(first_problems) < MAX_PROBLEMS:
                first_problems.append(str(exc))
    texts = [(prompt_key(r), render_text(r["chosen"]), render_text(r["rejected"]))
             for r in records]
    return {
        "path": str(path),
        "rows": len(records) + problems,
        "pairs": len(records),
        "prompts": len({prompt for prompt, _, _ in texts}),
        "splits": dict(Counter(split_of(r) for r in records)),
        "attributes": dict(Counter(r.get("attribute", NONE) for r in records).most_common()),
        "contexts": _top(Counter(r.get("context", NONE) for r in records)),
        "users": _top(Counter(r.get("user_id", NONE) for r in records)),
        "lengths": {field: _lengths([len(t[k]) for t in texts])
                    for k, field in enumerate(("prompt", "chosen", "rejected"))},
        "duplicates": len(texts) - len(set(texts)),
        "identical": identical,  # refused by normalize_pair, so also counted in problems
        "problems": {"count": problems, "first": first_problems},
    }


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a readable report, one topic per block."""
    lines = [f"{summary['path']}: {summary['pairs']} pairs from {summary['rows']} rows, "
             f"{summary['prompts']} prompts",
             "split: " + ", ".join(f"{k} {n}" for k, n in sorted(summary["splits"].items()))]
    lines.append("attributes:")
    lines += [f"  {n:7d}  {name}" for name, n in summary["attributes"].items()]
    for key in ("contexts", "users"):
        block = summary[key]
        shown = "" if block["distinct"] <= TOP else f" (top {TOP})"
        lines.append(f"{key}: {block['distinct']} distinct{shown}")
        lines += [f"  {n:7d}  {_short(name)}" for name, n in block["top"]]
    lines.append("length in characters (min / median / max):")
    for field, stats in summary["lengths"].items():
        if stats:
            lines.append(f"  {field:9s} {stats['min']} / {stats['median']:g} / {stats['max']}")
    lines.append(f"duplicate pairs (same prompt, chosen, rejected): {summary['duplicates']}")
    lines.append(f"pairs with chosen == rejected (among the problems): {summary['identical']}")
    problems = summary["problems"]
    lines.append(f"problems: {problems['count']}")
    lines += [f"  {p}" for p in problems["first"]]
    if problems["count"] > len(problems["first"]):
        lines.append(f"  … and {problems['count'] - len(problems['first'])} more")
    return "\n".join(lines)
