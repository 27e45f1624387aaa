"""``micro-rm data build`` and ``micro-rm data inspect``."""

from __future__ import annotations

import time
from pathlib import Path
import typer

from micro_rm.cli.app import app, check_output, emit
from micro_rm.cli.options import HfSplit, JsonFlag
from micro_rm.errors import MicroRMError

data_app = typer.Typer(help="Build pair files from datasets, and inspect them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("build")
def build(
    name: str = typer.Argument(..., help="Builder name, e.g. dsp, hh-rlhf, helpsteer2, rpr, jsonl. "
                                         "`micro-rm data list` shows them all."),
    source: str = typer.Option(..., "--source", help="Where the raw data is: a file, a folder or a "
                                                      "Hugging Face hub id."),
    out: Path = typer.Option(..., "--out", help="Pair file to write (JSON lines)."),
    split: str = typer.Option("all", "--split", help="Canonical prompt-hash split: train, test or all."),
    hf_split: HfSplit = None,
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Log and skip bad rows instead of failing."),
    as_json: JsonFlag = False,
) -> None:
    """Build a pair file from a dataset.

    Example: micro-rm data build dsp --source ../shared/data/dsp-domain-specific-preference
    --out dsp.jsonl --split train
    """
    from micro_rm.data.builders import build_pairs
    from micro_rm.data.readers import hf_split_default, write_pairs
    from micro_rm.data.split import select_split

    check_output(out, "--out", {"--source": source}, folder=False)
    start = time.perf_counter()
    with hf_split_default(hf_split):
        records = build_pairs(name, source, skip_invalid=skip_invalid)
    records = select_split(records, split)  # type: ignore[arg-type]
    if not records:
        raise MicroRMError(f"{source}: no pairs fall in split {split!r}; nothing written to {out}")
    n = write_pairs(records, out)
    result = {"builder": name, "split": split, "pairs": n, "out": str(out),
              "seconds": round(time.perf_counter() - start, 3)}
    emit(result, as_json, f"wrote {n} pairs ({split}) to {out}")


@data_app.command("list")
def list_builders(as_json: JsonFlag = False) -> None:
    """List the dataset builders and what each reads."""
    from micro_rm.data.builders import BUILDERS

    rows = {name: b.description for name, b in sorted(BUILDERS.items())}
    emit({"builders": rows}, as_json, "\n".join(f"{k:22s} {v}" for k, v in rows.items()))


@data_app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="A pair file (jsonl, json, parquet, csv) or dataset."),
    hf_split: HfSplit = None,
    as_json: JsonFlag = False,
) -> None:
    """Summarise a pair file: pairs per attribute / context / user, lengths, duplicates, problems.

    Example: micro-rm data inspect dsp.jsonl
    """
    from micro_rm.data.inspect import format_summary, inspect_pairs
    from micro_rm.data.readers import hf_split_default

    with hf_split_default(hf_split):
        summary = inspect_pairs(path)
    emit(summary, as_json, format_summary(summary))
