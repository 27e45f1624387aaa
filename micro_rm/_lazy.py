"""Lazy re-exports, so importing a package whose modules import torch or FastAPI stays cheap.

>>> __getattr__ = lazy_exports("my_package", {"dumps": "json"})   # in my_package/__init__.py
>>> __getattr__("dumps").__module__
'json'
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) for ``package`` that imports ``exports[name]``
    and returns its attribute ``name``; any other name raises ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
