"""What the benchmark scripts share: the machine line, markdown tables, median timing and
printing a table / writing it into its section of BENCHMARKS.md.

Imported as ``from _common import ...``: ``python benchmarks/X.py`` puts this folder first on
``sys.path``. Only the standard library is imported here, so a script that must stay small
(``scale.py``'s parent process imports neither numpy nor torch) can use it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


def data_dir() -> Path:
    """Where the data sets live: ``$MICRO_RM_DATA``, else ``../shared/data`` beside the repo."""
    return Path(os.environ.get("MICRO_RM_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    """The CPU as the tables name it: ``platform.processor()``, else ``platform.machine()``."""
    return platform.processor() or platform.machine()


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn``, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]],
                   align: str | None = None) -> list[str]:
    """The lines of a markdown table; ``align`` has one character per column, ``l`` or ``r``
    (default: all left).

    >>> markdown_table(["run", "pairs/s"], [("a", "1,200")], align="lr")
    ['| run | pairs/s |', '|---|---:|', '| a | 1,200 |']
    """
    align = align or "l" * len(columns)
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return ["| " + " | ".join(columns) + " |", rule,
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def write_section(heading: str, table: str, path: Path = BENCHMARKS_MD) -> None:
    """Put ``table`` (which starts with the line ``heading``) in place of the section under
    ``heading`` in ``path``, up to the next ``## ``; append it if there is no such section."""
    from micro_rm.atomic import atomic_open

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + table
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + table + (text[end:] if end >= 0 else "")
    with atomic_open(path) as fh:
        fh.write(text)


def publish(heading: str, table: str, write: bool) -> None:
    """Print ``table``; with ``write`` also put it into BENCHMARKS.md (:func:`write_section`)
    and say so."""
    print(table)
    if write:
        write_section(heading, table)
        print(f"wrote the section into {BENCHMARKS_MD}")
