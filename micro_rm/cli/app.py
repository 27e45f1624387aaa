"""The typer application: assembles the command groups and turns our errors into exit code 2.

Command modules import only typer at module level; the library (torch, transformers) is
imported inside each command, so ``micro-rm --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
from typing import Any, Callable, Optional, Sequence

import typer

app = typer.Typer(
    name="micro-rm",
    help="Personalized reward models with MiCRo: a mixture of Bradley-Terry heads on a frozen "
         "backbone, routed by context.\n\nStart with `micro-rm demo`; every command has --help "
         "with an example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Help texts shared by many commands' options.
CACHE_HELP = "Feature cache folder (default: $MICRO_RM_CACHE or the user cache dir)."
CACHE_ONLY_HELP = "Fail instead of encoding texts that are not in the cache yet."
JSON_HELP = "Print one JSON object as the last line."
HF_SPLIT_HELP = ("Split to read from a Hugging Face dataset (hub id or folder) with several, e.g. "
                 "test_prefs (default: the only one, or train).")


def field_docs(config_path: str) -> tuple[Callable[[str], str], Callable[[str], Any]]:
    """``(help, default)`` lookups for the fields of the config dataclass ``"module:Class"``, so
    each option is documented once, in the config. The module is imported on first lookup.

    >>> _help, _default = field_docs("micro_rm.train.config:Stage1Config")
    >>> _default("alpha")
    0.5
    """
    def field(name: str) -> tuple[str, Any]:
        module, name_of_class = config_path.split(":")
        cls = getattr(importlib.import_module(module), name_of_class)
        if hasattr(cls, "__pydantic_fields__"):      # micro_rm.train.config's pydantic dataclasses
            info = cls.__pydantic_fields__[name]
            return info.description, info.default
        info = cls.__dataclass_fields__[name]
        return info.metadata["help"], info.default

    return (lambda name: field(name)[0]), (lambda name: field(name)[1])


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: ``json.dumps`` would write the
    bare ``NaN`` that strict JSON parsers (``jq``, JavaScript, Go) reject.

    >>> strict_json({"nll": float("nan"), "acc": [1.0, float("inf")]})
    {'nll': None, 'acc': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def emit(result: dict[str, Any], as_json: bool, summary: str) -> None:
    """Print a human summary, or (with ``--json``) one strict JSON object as the last stdout line
    (a non-finite number is ``null``)."""
    if as_json:
        print(json.dumps(strict_json(result), default=str, allow_nan=False))
    else:
        print(summary)


def _register_commands() -> None:
    """Import every ``micro_rm/cli/*_cmd.py`` module; each registers its commands on ``app``."""
    import pkgutil

    import micro_rm.cli

    for module in sorted(m.name for m in pkgutil.iter_modules(micro_rm.cli.__path__)):
        if module.endswith("_cmd"):
            importlib.import_module(f"micro_rm.cli.{module}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI on ``argv``; return the exit code (0 ok, 2 bad input, 1 unexpected failure)."""
    from micro_rm.errors import MicroRMError

    _register_commands()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        # standalone mode: typer/click print usage errors themselves and exit 2 (SystemExit)
        app(args=list(argv) if argv is not None else None, prog_name="micro-rm")
    except MicroRMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UnicodeError as exc:  # a text no reader decoded first: still bad input, not a crash
        print(f"error: input is not valid Unicode ({exc}); re-save it as UTF-8", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
