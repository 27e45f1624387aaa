"""The typer application: assembles the command groups and turns our errors into exit code 2.

Command modules import only typer and torch-free helpers at module level; the library (torch,
transformers) is imported inside each command, so ``micro-rm --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import math
import pkgutil
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import typer
import typer.main

import micro_rm.progress
from micro_rm.atomic import check_not_input, check_output_path, local_file
from micro_rm.errors import InvalidRecord, MicroRMError

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


@app.callback()
def _global_options(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide every progress bar (as does the "
                               "environment variable TQDM_DISABLE=1); results and errors still print."),
) -> None:
    """Options that go before the command: ``micro-rm --quiet train ...``."""
    micro_rm.progress.QUIET = quiet     # set on every run, so one quiet call does not outlive itself


def field_docs(config_path: str) -> tuple[Callable[[str], str], Callable[[str], Any]]:
    """``(help, default)`` lookups for the fields of the config dataclass ``"module:Class"``, so
    each option is documented once, in the config."""
    module, name_of_class = config_path.split(":")
    cls = getattr(importlib.import_module(module), name_of_class)
    fields = cls.__pydantic_fields__            # a micro_rm.schema.config_class
    return (lambda name: fields[name].description), (lambda name: fields[name].default)


def config_option(config_path: str) -> Callable[[str], Any]:
    """``option(name)``: the typer option ``--name`` whose help and default are the config field's."""
    help_of, default_of = field_docs(config_path)
    return lambda name: typer.Option(default_of(name), "--" + name.replace("_", "-"), help=help_of(name))


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: ``json.dumps`` would write the
    bare ``NaN`` that strict JSON parsers (``jq``, JavaScript, Go) reject."""
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


def check_range(value: Optional[float], option: str, low: float, high: float) -> None:
    """Refuse a numeric option outside ``[low, high]``, naming the option and the range (None, an
    option left unset, passes)."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise MicroRMError(f"{option} must be in [{low}, {high}], got {value}")


def check_output(path: Any, option: str, inputs: dict[str, object], *, folder: bool,
                 replaces_folder: bool = False, model: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written or would overwrite one of the command's
    ``inputs``; a ``model`` folder must also be new, empty or a model folder. None (unset) passes."""
    if path is None:
        return
    if model:
        from micro_rm.model.pretrained import check_destination

        check_destination(path)
    check_output_path(path, option, folder=folder)
    check_not_input(path, option, inputs, replaces_folder=replaces_folder or model)


@contextlib.contextmanager
def open_state(state: str, model: Any = None, *, reader: Optional[str] = None) -> Iterator[Any]:
    """The state store at ``--state`` (for ``model``'s heads when given), closed on exit. For a
    ``reader`` (a command that only reads a user's state) a path holding no state file is refused,
    never created. A damaged database's errors, while it is open, become one line naming --state."""
    from micro_rm.online import open_store
    from micro_rm.online.identity import state_model_id

    file = local_file(state)
    if reader is not None and file is not None and not Path(file).is_file():
        raise MicroRMError(f"--state {state}: no such state file; {reader} reads a user's state and never "
                           "creates one (`micro-rm feedback` or the service writes it)")
    heads = {} if model is None else {"model_id": state_model_id(model), "num_heads": model.config.num_heads}
    try:
        with open_store(state, **heads) as store:
            yield store
    except sqlite3.OperationalError as exc:     # locked, disk full, I/O: the file may be sound
        raise MicroRMError(f"--state {state}: the state database failed ({exc}); nothing was changed") from None
    except sqlite3.DatabaseError as exc:
        raise MicroRMError(f"--state {state}: not a readable micro-rm state database ({exc}); restore it "
                           "from a backup, or point --state at another file") from None


def load_features(model_dir: str, data: str, hf_split: Optional[str], cache_dir: Optional[Path],
                  cache_only: bool) -> tuple[Any, list[dict], Any]:
    """The model, the pair records of ``data`` and their features as the model reads them."""
    from micro_rm.data.readers import read_pairs
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.text import featurize_for

    model = MixtureRewardModel.from_pretrained(model_dir)
    records = read_pairs(data, hf_split=hf_split)
    return model, records, featurize_for(model, records, cache_dir, allow_encode=not cache_only)


def _register_commands() -> None:
    """Import every ``micro_rm/cli/*_cmd.py`` module; each registers its commands on ``app``."""
    for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
        if module.endswith("_cmd"):
            importlib.import_module(f"micro_rm.cli.{module}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI on ``argv``; return the exit code (0 ok, 2 bad input, 1 unexpected failure)."""
    _register_commands()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        # standalone mode: typer/click print usage errors themselves and exit 2 (SystemExit)
        app(args=args, prog_name="micro-rm")
    except MicroRMError as exc:
        print(f"error: {exc}{_skip_advice(exc, args)}", file=sys.stderr)
        return 2
    except UnicodeError as exc:  # a text no reader decoded first: still bad input, not a crash
        print(f"error: input is not valid Unicode ({exc}); re-save it as UTF-8", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # a state store read outside open_state
        print(f"error: the state database (--state) is not readable ({exc})", file=sys.stderr)
        return 2
    except OSError as exc:
        return _os_error(exc, args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
_OUTPUTS = ("--out", "--report", "--state")     # the options that name what a command writes


def _os_error(exc: OSError, args: list[str]) -> int:
    """One line for a failed read or write: exit 1 when the disk (or the file size limit) is full,
    2 when a path may not be written or does not exist (bad input), else 1. A write names the
    command's output option (the file written is a temporary one beside it)."""
    output = next((f"{opt} {value}" for opt, value in zip(args, args[1:]) if opt in _OUTPUTS), None)
    where = exc.filename if exc.filename is not None and exc.errno not in _FULL else output or exc.filename
    if exc.errno in _FULL:
        print(f"error: {where}: {exc.strerror} (the disk or the file size limit is full); nothing was kept; "
              "free some space and run again", file=sys.stderr)
        return 1
    if exc.errno in _DENIED:
        print(f"error: {where}: permission denied ({exc.strerror}); choose a path this user may write "
              "(or read)", file=sys.stderr)
        return 2
    print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
    return 2 if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR) else 1


def _skip_advice(exc: MicroRMError, args: list[str]) -> str:
    """How to skip a record that must be fixed, where the command offers a way: its --skip-invalid
    flag (data build, encode) or the config's ``skip_invalid`` (experiment); "" elsewhere."""
    if not (isinstance(exc, InvalidRecord) and exc.fix_it):
        return ""
    command: Any = typer.main.get_command(app)
    for token in args:
        if not hasattr(command, "commands"):     # a command, not a group: found it
            break
        if token.startswith("-"):
            continue
        command = command.commands.get(token) or command.commands.get("profile")  # heads MODEL = profile
    if command is not None and any("--skip-invalid" in p.opts for p in getattr(command, "params", [])):
        return " or pass --skip-invalid"
    if getattr(command, "name", None) == "experiment":
        return " or set `skip_invalid: true` in the config's data section"
    return ""


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
