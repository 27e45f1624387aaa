"""Write files so that a crash never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import IO, Callable, Iterator

from micro_rm.errors import MicroRMError

_TRIES = 100
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def temp_file(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """Create a new empty file with a random name in ``folder``; return its path. Its mode is 0666
    less the umask, as ``open(path, "w")`` gives (``tempfile.mkstemp`` makes 0600), so the file
    renamed over a result has the usual permissions without reading the process-wide umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    return _create(folder, prefix, suffix, lambda path: os.close(os.open(path, flags, 0o666)))


def temp_folder(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """Create a new empty folder with a random name in ``folder``: mode 0777 less the umask (0755
    under umask 022), where ``tempfile.mkdtemp`` makes 0700."""
    return _create(folder, prefix, suffix, lambda path: os.mkdir(path, 0o777))


def _create(folder: str | os.PathLike, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    for _ in range(_TRIES):
        path = Path(folder) / f"{prefix}{secrets.token_hex(8)}{suffix}"
        with contextlib.suppress(FileExistsError):
            make(path)
            return path
    raise FileExistsError(f"no free temporary name in {folder} after {_TRIES} tries")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    >>> with atomic_path("out.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(b"data")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, prefix=f".{path.name}.")
    mode = stat.S_IMODE(tmp.stat().st_mode)     # 0666 less the umask
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)     # a writer that replaced tmp (safetensors writes via a 0600 file) reset it
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
        yield fh


def json_default(value: object) -> object:
    """``json.dumps``'s ``default`` for the files we write: numpy/torch numbers and arrays become
    plain numbers and lists, paths strings (so callers need not convert them).

    >>> import json, numpy as np
    >>> json.dumps({"acc": np.float32(0.5), "out": Path("runs")}, default=json_default)
    '{"acc": 0.5, "out": "runs"}'
    """
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"a {type(value).__name__} is not JSON-serialisable: {value!r}")


def check_output_path(path: str | os.PathLike, option: str, *, folder: bool,
                      writable: bool = True) -> Path:
    """Refuse an output ``path`` that cannot be written, before any work: a file where a
    ``folder`` is wanted (or a folder where a file is), a file in the way of its parent folders,
    or (with ``writable``) a read-only location. ``option`` names it in the message (``"--out"``).
    """
    path = Path(path)
    want = "a folder" if folder else "a file"
    if path.exists() and path.is_dir() != folder:
        raise MicroRMError(f"{option} {path}: is {'a file' if folder else 'a folder'}, but {want} "
                           f"is written there; choose another path")
    existing = path if path.exists() else path.parent
    while not existing.exists() and existing != existing.parent:     # the nearest existing ancestor
        existing = existing.parent
    if not existing.is_dir() and existing != path:
        raise MicroRMError(f"{option} {path}: {existing} is a file, so no folder can be made inside "
                           "it; choose another path")
    if writable and not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
        raise MicroRMError(f"{option} {path}: {existing} is not writable; choose another path")
    return path


def local_file(location: str | os.PathLike) -> str | None:
    """The local path a location names: itself, or the file of a ``sqlite:///PATH`` state URL;
    None for any other URL (``postgresql://…``), which names nothing on this machine.

    >>> local_file("runs/state.db"), local_file("sqlite:///runs/state.db"), local_file("postgresql://db/x")
    ('runs/state.db', 'runs/state.db', None)
    """
    text = os.fspath(location).removeprefix("sqlite:///")
    return None if URL_SCHEME.match(text) else text


def check_not_input(path: str | os.PathLike, option: str, inputs: dict[str, object], *,
                    replaces_folder: bool = False) -> None:
    """Refuse an output ``path`` that is one of the command's ``inputs`` (``{"--data": path}``;
    a ``sqlite:///`` state URL counts as its file, other URLs and hub ids are skipped: see
    :func:`local_file`), so a command never overwrites what it reads. With ``replaces_folder``
    (an output folder that is replaced as a whole) an input inside ``path`` is refused too."""
    def local(value: object) -> Path | None:
        file = None if value is None else local_file(value)  # type: ignore[arg-type]
        return None if file is None else Path(file).resolve()   # a folder not made yet (a new --cache) counts too

    out = local(path)
    if out is None:
        return
    for name, value in inputs.items():
        source = local(value)
        if source is None:
            continue
        same = source == out or (out.exists() and source.exists() and os.path.samefile(source, out))
        if same or (replaces_folder and out in source.parents):
            where = "is" if same else "holds"
            raise MicroRMError(f"{option} {path}: {where} the {name} input {value}, which writing there would "
                               f"destroy; choose another {option}")
