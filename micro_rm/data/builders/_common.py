"""What every builder shares: schema checks on raw rows, the files of a source, and the sink that
validates built pairs and applies ``--skip-invalid`` in one place."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from micro_rm.data.readers import HF_DATASET_MARKERS, read_rows
from micro_rm.data.records import normalize_pair, render_text
from micro_rm.errors import InvalidRecord, MicroRMError

logger = logging.getLogger("micro_rm.data.builders")


def need(row: Any, field: str, where: str, schema: str, prefix: str = "") -> Any:
    """``row[field]``, or an error naming the place, the field and the schema the builder expects.

    >>> need({"query": "q"}, "query", "dsp.json item 0", "dsp schema {query, responses}")
    'q'
    """
    if not isinstance(row, Mapping) or row.get(field) is None:
        raise InvalidRecord(f"{where}: expected field `{prefix}{field}` of the {schema}; "
                            "is this the right builder? (`micro-rm data list`)")
    return row[field]


def source_files(source: str, pattern: str) -> list[str]:
    """The files matching ``pattern`` in a plain folder (sorted, so ids are stable); anything else
    (a file, a saved dataset folder, a hub id) as it is."""
    path = Path(source)
    if not path.is_dir() or any((path / m).exists() for m in HF_DATASET_MARKERS):
        return [str(source)]
    files = sorted(str(p) for p in path.glob(pattern) if p.is_file())
    if not files:
        raise MicroRMError(f"{source}: no files matching {pattern} in this folder; "
                           "pass the data file itself")
    return files


def source_rows(source: str, pattern: str) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` over every file ``source_files`` picks, in order."""
    for path in source_files(source, pattern):
        yield from read_rows(path)


def degenerate(record: Mapping[str, Any]) -> str | None:
    """Why a built pair carries no preference (an empty side, or both sides the same), or None."""
    chosen, rejected = (render_text(record.get(side) or "").strip() for side in ("chosen", "rejected"))
    if not chosen or not rejected:
        return "an empty response"
    return "identical responses" if chosen == rejected else None


class PairSink:
    """Collects built pairs: validates each, counts those dropped on purpose (ties, empty
    responses), and logs or raises on bad rows."""

    def __init__(self, source: str, skip_invalid: bool) -> None:
        self.source = str(source)
        self.skip_invalid = skip_invalid
        self.records: list[dict[str, Any]] = []
        self.skipped = 0
        self.dropped: Counter[str] = Counter()  # reason -> pairs left out on purpose (builders count)

    @contextmanager
    def row(self) -> Iterator[None]:
        """Wrap the work on one raw row: with ``skip_invalid`` a bad row is logged and skipped."""
        try:
            yield
        except InvalidRecord as exc:
            if not self.skip_invalid:
                raise
            self.skipped += 1
            logger.warning("skipped: %s", exc)

    def add(self, record: dict[str, Any], where: str, drop_degenerate: bool = False) -> None:
        """Validate and keep one pair; ``drop_degenerate`` counts and drops pairs with an empty side
        or identical sides (for sources where those are noise, not errors)."""
        if drop_degenerate and (reason := degenerate(record)):
            self.dropped[reason] += 1
            return
        with self.row():
            self.records.append(normalize_pair(record, where))

    def finish(self) -> list[dict[str, Any]]:
        """The pairs, after logging what was dropped or skipped. No pairs at all is an error."""
        if self.dropped:
            left_out = ", ".join(f"{n} with {reason}" for reason, n in sorted(self.dropped.items()))
            logger.warning("%s: built %d pairs; left out %s", self.source, len(self.records), left_out)
        if self.skipped:
            logger.warning("%s: skipped %d invalid row(s) or pair(s)", self.source, self.skipped)
        if not self.records:
            raise MicroRMError(f"{self.source}: no valid pairs could be built")
        return self.records
