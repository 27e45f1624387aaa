"""Read rows from files and Hugging Face datasets; read and write pair files.

``read_rows`` yields raw rows in whatever schema the source has (builders use it);
``read_pairs`` validates them as pair records. Supported sources: ``.jsonl`` (also
``.jsonl.gz``), ``.json`` (a list of objects), ``.parquet``, ``.csv``, a local dataset folder or
a Hugging Face hub id (through ``datasets``).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from micro_rm.atomic import atomic_open
from micro_rm.data.records import normalize_pair
from micro_rm.errors import InvalidRecord, MicroRMError

logger = logging.getLogger(__name__)

FILE_FORMATS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in FILE_FORMATS:
        if name.endswith(suffix):
            return suffix.replace(".gz", "")
    raise MicroRMError(f"{path}: unknown format; use one of {', '.join(FILE_FORMATS)}, "
                       "a dataset folder or a Hugging Face hub id")


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise MicroRMError(f"{path} line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise MicroRMError(f"{path}: expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise MicroRMError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path} item {i}", row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MicroRMError(f"{path} line {lineno}: malformed JSON ({exc.msg})") from None
            yield f"{path} line {lineno}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            yield f"{path} line {lineno}", {k: (v if v != "" else None) for k, v in row.items()}


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise MicroRMError(f"{path}: not a readable parquet file ({exc})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


def _dataset_rows(source: str, split: str | None) -> Iterator[tuple[str, Any]]:
    """Rows of a Hugging Face dataset (hub id or local folder)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise MicroRMError("reading Hugging Face datasets needs `pip install datasets`") from None
    path = Path(source)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(source)
    except Exception as exc:
        raise MicroRMError(f"{source}: could not load as a Hugging Face dataset "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        name = split if split is not None else ("train" if "train" in names else names[0])
        if name not in ds:
            raise MicroRMError(f"{source}: no split {name!r}; it has {', '.join(names)}")
        ds = ds[name]
        where = f"{source}[{name}]"
    else:
        where = source
    for i, row in enumerate(ds):
        yield f"{where} row {i}", row


def read_rows(source: str | os.PathLike, hf_split: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` for every row of ``source``; ``where`` names file and line for errors.

    ``hf_split`` picks the split of a Hugging Face dataset with several (default: ``train``).
    """
    path = Path(source)
    if path.is_file():
        fmt = _format_of(path)
        reader = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows,
                  ".parquet": _parquet_rows}[fmt]
        yield from reader(path)
    elif path.is_dir():
        yield from _dataset_rows(str(path), hf_split)
    elif _looks_like_hub_id(str(source)):
        yield from _dataset_rows(str(source), hf_split)
    else:
        raise MicroRMError(f"{source}: no such file or folder")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/")) \
        and not any(source.lower().endswith(s) for s in FILE_FORMATS)


def read_pairs(source: str | os.PathLike, skip_invalid: bool = False,
               hf_split: str | None = None) -> list[dict[str, Any]]:
    """Read and validate pair records. A bad record raises, naming file, line and field;
    with ``skip_invalid`` it is logged and skipped, and the count is logged at the end."""
    records, skipped = [], 0
    for where, row in read_rows(source, hf_split):
        try:
            records.append(normalize_pair(row, where))
        except InvalidRecord as exc:
            if not skip_invalid:
                raise
            skipped += 1
            logger.warning("skipped: %s", exc)
    if skipped:
        logger.warning("%s: skipped %d invalid record(s) of %d", source, skipped, skipped + len(records))
    if not records:
        raise MicroRMError(f"{source}: no valid pair records")
    return records


def write_pairs(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write records as JSON lines, atomically (a failure leaves no partial file). Returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
