"""Config classes that declare each field's type, range and help (the CLI's ``--help``) once: a
pydantic dataclass, checked on construction and assignment; a bad value is one :class:`MicroRMError` line.

>>> @config_class
... class Example:
...     heads: integer(1, "Number of reward heads.", 64) = 4
>>> Example(heads=0)
Traceback (most recent call last):
...
micro_rm.errors.MicroRMError: `heads` must be an integer in [1, 64], got 0
"""

from __future__ import annotations

import functools
import math
import typing
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError

from micro_rm.errors import MicroRMError


def accepts(text: str, help: str) -> Any:
    """The field's help and, for error messages, what it accepts in words."""
    return Field(description=help, json_schema_extra={"allowed": text})


def as_number(value: Any) -> Any:
    """Refuse a bool where a number is expected; read a YAML 1.1 string such as ``1e-3``."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a number")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def integer(low: int, help: str, high: int | None = None) -> Any:
    """An ``int`` in [low, high] (a bool or a float such as 2.0 is refused). ``high`` bounds what
    would otherwise only fail later, out of memory or time (e.g. 100,000 heads)."""
    text = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high:,}]"
    return Annotated[int, Field(strict=True, ge=low, le=high), accepts(text, help)]


def number(low: float, high: float, help: str, *, open_low: bool = False, open_high: bool = False) -> Any:
    """A finite number in [low, high] (bounds open where asked)."""
    bounds = Field(allow_inf_nan=False, **{"gt" if open_low else "ge": low},
                   **({} if high == math.inf else {"lt" if open_high else "le": high}))
    text = f"a finite number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Annotated[float, BeforeValidator(as_number), bounds, accepts(text, help)]


def choice(values: tuple[str, ...], help: str) -> Any:
    """One of ``values``, exactly."""
    return Annotated[Literal[values], accepts(f"one of {', '.join(values)}", help)]


def integers(low: int, help: str) -> Any:
    """A list of integers ≥ ``low``."""
    return Annotated[list[integer(low, "")], accepts(f"a list of integers ≥ {low}", help)]


def config_class(cls: Optional[type] = None, *, flags: bool = False) -> Any:
    """``cls`` as a pydantic dataclass that refuses unknown keys, checks assignments too, and
    raises :class:`MicroRMError` (one line, see :func:`explain`) instead of pydantic's report.
    ``@config_class(flags=True)``: messages name a field by its CLI flag (``--batch-wait-ms``)."""
    if cls is None:
        return functools.partial(config_class, flags=flags)
    cls = pydantic.dataclasses.dataclass(cls, config=ConfigDict(extra="forbid", validate_assignment=True))

    def explained(method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                method(self, *args, **kwargs)
            except ValidationError as exc:
                raise MicroRMError(explain(exc, type(self), flags=flags)) from None
        return wrapper

    cls.__init__, cls.__setattr__ = explained(cls.__init__), explained(cls.__setattr__)
    return cls


_BY_TYPE = {"bool_type": "true or false", "string_type": "a string", "dict_type": "a mapping of keys",
            "list_type": "a list", "int_type": "an integer", "float_type": "a number",
            "float_parsing": "a number", "dataclass_type": "a mapping of keys",
            "dataclass_args_type": "a mapping of keys"}


def explain(exc: ValidationError, root: type, where: str = "", flags: bool = False) -> str:
    """The first error of ``exc`` as one line: the key path from ``root`` (with ``flags``, the
    field's CLI flag), what it accepts and what came, e.g. "config.yaml: `stage2.folds` must be
    an integer ≥ 2, got 1"."""
    error = exc.errors(include_url=False)[0]
    prefix = f"{where}: " if where else ""
    cls, annotation, allowed, path = root, None, None, ""
    for part in error["loc"]:
        if isinstance(part, int) and not path:      # a positional argument: its field's name
            part = list(root.__pydantic_fields__)[part]
        if isinstance(part, int):           # a list item: its own type says what it accepts
            path += f"[{part}]"
            annotation = next(iter(typing.get_args(annotation)), None)
            allowed = _allowed_text(annotation) or allowed
            continue
        known = getattr(cls, "__pydantic_fields__", None)
        if known is None:                   # past the field: pydantic's tags for union members
            break
        joined = f"{path}.{part}" if path else part
        if part not in known:
            section = path or ("the top level" if where else root.__name__)
            accepted = ", ".join(k for k in known if k != "path")     # ExperimentConfig.path is no key
            return f"{prefix}unknown key `{joined}`; {section} accepts: {accepted}"
        info, path = known[part], joined
        annotation = info.annotation
        allowed = (info.json_schema_extra or {}).get("allowed") or _allowed_text(annotation)
        cls = _nested_class(annotation)
    shown = "--" + path.replace("_", "-") if flags else f"`{path or 'the file'}`"
    if error["type"] in ("missing", "missing_argument"):
        return f"{prefix}missing key {shown}"
    if allowed is None and error["type"] == "value_error":
        return f"{prefix}{shown}: {error['ctx']['error']}"
    what = allowed or _BY_TYPE.get(error["type"], error["msg"][0].lower() + error["msg"][1:])
    return f"{prefix}{shown} must be {what}, got {error['input']!r}"


def _allowed_text(annotation: Any) -> Optional[str]:
    """The ``allowed`` words carried by an ``Annotated`` type, also inside ``Optional``."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, pydantic.fields.FieldInfo) and meta.json_schema_extra:
            return meta.json_schema_extra.get("allowed")
    if typing.get_origin(annotation) is Union:
        texts = [t for t in map(_allowed_text, typing.get_args(annotation)) if t]
        return texts[0] if texts else None
    return None


def _nested_class(annotation: Any) -> Optional[type]:
    """The config class a field holds (directly, in a list or in ``Optional``), or None."""
    if hasattr(annotation, "__pydantic_fields__"):
        return annotation
    for arg in typing.get_args(annotation):
        nested = _nested_class(arg)
        if nested is not None:
            return nested
    return None
