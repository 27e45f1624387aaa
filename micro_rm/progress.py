"""Every progress bar of micro-rm comes from :func:`progress_bar`, so one switch silences them all:
``enabled=False`` (``--json``, ``progress=False``), ``--quiet`` or ``TQDM_DISABLE=1`` (tqdm's own
variable, read here because the explicit ``disable=`` argument would override it)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

QUIET = False   # set by the CLI's global --quiet for the command it runs


def bars_silenced() -> bool:
    """True under ``--quiet`` or ``TQDM_DISABLE`` set to anything but ``""``, ``0`` or ``false``."""
    return QUIET or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def progress_bar(iterable: Optional[Iterable[Any]] = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one with ``total=``), hidden when
    ``enabled`` is false or bars are silenced (:func:`bars_silenced`).

    >>> sum(progress_bar(range(3), enabled=False, desc="counting"))
    3
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled or bars_silenced(), **kwargs)


def silence_transformers_bars() -> None:
    """Hide transformers' own bars ("Loading weights") too when bars are silenced; call it before
    ``from_pretrained``. (It is a process-wide switch of transformers, so it is only ever turned off.)"""
    if bars_silenced():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
