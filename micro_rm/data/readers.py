"""Read rows from files and Hugging Face datasets (the README's "Data" section lists the sources);
read and write pair files. ``read_rows`` yields raw rows in the source's schema (builders use it),
``read_pairs`` validates them as pair records.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import gzip
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from micro_rm.atomic import atomic_open
from micro_rm.data.records import normalize_pair
from micro_rm.errors import InvalidRecord, MicroRMError

logger = logging.getLogger(__name__)

FILE_FORMATS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
HF_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")  # files of a saved dataset folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----- the input-decoding layer: every byte-level failure becomes one MicroRMError -------------
def _bytes_lines(path: Path) -> Iterator[bytes]:
    """Raw lines of a plain or gzipped file; a damaged gzip stream is a :class:`MicroRMError`."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            yield from fh
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise MicroRMError(f"{path}: not a readable gzip file ({exc or type(exc).__name__}); "
                           "re-compress it, or drop the .gz suffix if it is plain text") from None


def decoded_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 file (gzipped when it ends in ``.gz``);
    invalid UTF-8 names the line and the byte, and a leading byte-order mark is dropped."""
    path = Path(path)
    for lineno, raw in enumerate(_bytes_lines(path), start=1):
        try:
            yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise MicroRMError(f"{path} line {lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                               f"column {exc.start + 1}); re-save the file as UTF-8") from None


def parse_json(text: str, where: str, whole_file: bool = False) -> Any:
    """``json.loads`` whose every failure (malformed, nested too deeply, a number too long) is
    one :class:`MicroRMError` naming ``where`` (and the line, for a ``whole_file``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f" line {exc.lineno}" if whole_file else ""
        raise MicroRMError(f"{where}{line}: malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise MicroRMError(f"{where}: JSON nested too deeply to read; flatten the record") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise MicroRMError(f"{where}: unreadable JSON value ({exc})") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The whole text of a UTF-8 (or gzipped UTF-8) file, through :func:`decoded_lines`."""
    path = Path(path)
    try:
        return "".join(line for _, line in decoded_lines(path))
    except OSError as exc:
        raise MicroRMError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    data = parse_json(read_text(path), str(path), whole_file=True)
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
    for lineno, line in decoded_lines(path):
        if line.strip():
            yield f"{path} line {lineno}", parse_json(line, f"{path} line {lineno}")


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(line for _, line in decoded_lines(path))
    try:
        for row in reader:
            yield f"{path} line {reader.line_num}", {k: (v if v != "" else None) for k, v in row.items()}
    except csv.Error as exc:
        raise MicroRMError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise MicroRMError(f"{path}: not a readable parquet file ({exc})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


def _hf_object_rows(ds: Any, split: str | None, source: str) -> Iterator[tuple[str, Any]]:
    """Rows of a ``datasets.Dataset``, or of one split of a ``DatasetDict``: ``split``, else
    the only one, else ``train``; any other choice is ambiguous, and the error lists the splits
    (ultrafeedback_binarized has train_prefs, test_prefs, train_gen ... and no train)."""
    import datasets
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = list(ds.keys())
        if split is None and len(names) != 1 and "train" not in names:
            raise MicroRMError(f"{source}: has splits {', '.join(names)} and none is called train; "
                               "choose one with --hf-split (hf_split= in Python)")
        name = split if split is not None else (names[0] if len(names) == 1 else "train")
        if name not in ds:
            raise MicroRMError(f"{source}: no split {name!r}; it has {', '.join(names)} (--hf-split)")
        ds, source = ds[name], f"{source}[{name}]"
    elif split is not None and getattr(ds, "split", None) is not None and str(ds.split) != split:
        raise MicroRMError(f"{source}: is the {ds.split} split, not {split!r}")
    for i, row in enumerate(ds):
        yield f"{source} row {i}", row


# The split for reads that name none, set by ``hf_split_default`` (builders keep one argument).
_SPLIT: contextvars.ContextVar[str | None] = contextvars.ContextVar("micro_rm_hf_split", default=None)


@contextlib.contextmanager
def hf_split_default(split: str | None) -> Iterator[None]:
    """Within the block, Hugging Face datasets read without an explicit split use ``split``
    (``micro-rm data build --hf-split``).

    >>> with hf_split_default("test_prefs"):                                   # doctest: +SKIP
    ...     pairs = build_pairs("preference", "HuggingFaceH4/ultrafeedback_binarized")
    """
    token = _SPLIT.set(split)
    try:
        yield
    finally:
        _SPLIT.reset(token)


def _is_hf_dataset(source: Any) -> bool:
    """True for a ``datasets`` Dataset / DatasetDict object (checked without importing datasets)."""
    return type(source).__module__.split(".")[0] == "datasets"


def read_rows(source: str | os.PathLike | Any, hf_split: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` for every row of ``source`` (a file, a dataset folder, a hub id or a
    ``datasets`` object); ``where`` names file and line for errors. ``hf_split`` picks the split of
    a dataset with several (default: the only one, or ``train``)."""
    hf_split = hf_split if hf_split is not None else _SPLIT.get()
    if _is_hf_dataset(source):
        yield from _hf_object_rows(source, hf_split, "dataset")
        return
    path = Path(source)
    if path.is_file():
        suffix = next((s for s in FILE_FORMATS if path.name.lower().endswith(s)), None)
        if suffix is None:
            raise MicroRMError(f"{path}: unknown format; use one of {', '.join(FILE_FORMATS)}, "
                               "a dataset folder or a Hugging Face hub id")
        reader = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows,
                  ".parquet": _parquet_rows}[suffix.replace(".gz", "")]
        try:
            yield from reader(path)
        except OSError as exc:
            raise MicroRMError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    elif path.is_dir() or hub_id(str(source)):
        import datasets
        try:
            saved = path.is_dir() and any((path / f).exists() for f in HF_DATASET_MARKERS)
            ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
        except Exception as exc:
            raise MicroRMError(f"{path}: could not load as a Hugging Face dataset "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        yield from _hf_object_rows(ds, hf_split, str(path))
    else:
        raise MicroRMError(f"{source}: no such file or folder")


def hub_id(value: Any) -> str | None:
    """``value`` if it looks like a Hugging Face hub id (``owner/name``), else None (a local path).

    >>> hub_id("sentence-transformers/all-MiniLM-L6-v2"), hub_id("/data/model"), hub_id("runs/x.jsonl")
    ('sentence-transformers/all-MiniLM-L6-v2', None, None)
    """
    if not isinstance(value, str) or not _HUB_ID.match(value) or value.startswith((".", "~")):
        return None
    return None if value.lower().endswith(FILE_FORMATS + (".gz",)) else value


def read_pairs(source: str | os.PathLike | Any, skip_invalid: bool = False,
               hf_split: str | None = None) -> list[dict[str, Any]]:
    """Read and validate pair records from a file, folder, hub id or ``datasets.Dataset``; a bad
    record raises, naming file, line and field, or with ``skip_invalid`` is logged and skipped."""
    records, skipped = [], 0
    name = "dataset" if _is_hf_dataset(source) else source
    for where, row in read_rows(source, hf_split):
        try:
            records.append(normalize_pair(row, where))
        except InvalidRecord as exc:
            if not skip_invalid:
                raise
            skipped += 1
            logger.warning("skipped: %s", exc)
    if skipped:
        logger.warning("%s: skipped %d invalid record(s) of %d", name, skipped, skipped + len(records))
    if not records:
        raise MicroRMError(f"{name}: no valid pair records")
    return records


def write_pairs(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write records as JSON lines, atomically (a failure leaves no partial file). Returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for n, record in enumerate(records, start=1):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return n
