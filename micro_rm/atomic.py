"""Write files so that a crash never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    >>> with atomic_path("out.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(b"data")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(path: str | os.PathLike, option: str, *, folder: bool,
                      writable: bool = True) -> Path:
    """Refuse an output ``path`` that cannot be written, before any work: a file where a
    ``folder`` is wanted (or a folder where a file is), a file in the way of its parent folders,
    or (with ``writable``) a read-only location. ``option`` names it in the message (``"--out"``).

    >>> check_output_path("runs/new-report", "--report", folder=True)  # doctest: +SKIP
    PosixPath('runs/new-report')
    """
    from micro_rm.errors import MicroRMError

    path = Path(path)
    want = "a folder" if folder else "a file"
    if path.exists() and path.is_dir() != folder:
        raise MicroRMError(f"{option} {path}: is {'a file' if folder else 'a folder'}, but {want} "
                           f"is written there; choose another path")
    existing = _nearest_existing(path.parent if not path.exists() else path)
    if not existing.is_dir() and existing != path:
        raise MicroRMError(f"{option} {path}: {existing} is a file, so no folder can be made inside "
                           "it; choose another path")
    if writable and not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
        raise MicroRMError(f"{option} {path}: {existing} is not writable; choose another path")
    return path


def check_not_input(path: str | os.PathLike, option: str, inputs: dict[str, object], *,
                    replaces_folder: bool = False) -> None:
    """Refuse an output ``path`` that is one of the command's ``inputs`` (``{"--data": path}``;
    a ``sqlite:///`` state URL counts as its file, other URLs and hub ids are skipped), so a
    command never overwrites what it reads. With ``replaces_folder`` (an output folder that is
    replaced as a whole) an input inside ``path`` is refused too.

    >>> check_not_input("scores.jsonl", "--out", {"--data": "scores.jsonl"})  # doctest: +SKIP
    Traceback (most recent call last):
    micro_rm.errors.MicroRMError: --out scores.jsonl: is the --data input; ...
    """
    from micro_rm.errors import MicroRMError

    def local(value: object) -> Path | None:
        text = os.fspath(value)  # type: ignore[call-overload]
        text = text[len("sqlite:///"):] if text.startswith("sqlite:///") else text
        return None if "://" in text else Path(text)

    out = local(path)
    if out is None:
        return
    out = out.resolve()
    for name, value in inputs.items():
        source = None if value is None else local(value)
        if source is None:
            continue
        source = source.resolve()      # a folder not made yet (a new --cache) counts too
        same = source == out or (out.exists() and source.exists() and os.path.samefile(source, out))
        if same or (replaces_folder and out in source.parents):
            where = "is" if same else "holds"
            raise MicroRMError(f"{option} {path}: {where} the {name} input {value}, which writing there would "
                               f"destroy; choose another {option}")
