"""``micro-rm experiment`` (the paper's protocol from a YAML config) and ``micro-rm demo``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import CACHE_HELP, JSON_HELP, app, emit


def _command(name: str, *args: object, **options: object) -> str:
    """The command line as a user would retype it (for the report header)."""
    parts = ["micro-rm", name, *(str(a) for a in args)]
    for key, value in options.items():
        if value not in (None, False):
            parts += [f"--{key}"] + ([] if value is True else [str(value)])
    return " ".join(shlex.quote(p) for p in parts)


@app.command("experiment")
def experiment(
    config_file: Path = typer.Argument(..., metavar="CONFIG.yaml", help="Experiment config (see configs/)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Override the config's backbone: "
                                           "default, static, a Hugging Face model id or a local folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: runs/<config name>)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (with `report`, the "
                                 "folder) as the last line."),
) -> None:
    """Run the paper's whole protocol from a config: data → split → encode (cached) → stage 1
    (MiCRo grid, single, static, shared-base) → stage 2 → HyRe, MiCRo-HyRe → oracle → budget
    curve → a report folder (report.md, results.json, PNG plots).

    Example: micro-rm experiment configs/dsp.yaml --out runs/dsp
    """
    from micro_rm.atomic import check_output_path
    from micro_rm.data.readers import read_text
    from micro_rm.experiment.config import ExperimentConfig

    if config_file.is_file():
        read_text(config_file, "config")                # invalid UTF-8: one line naming the line
    config = ExperimentConfig.from_yaml(config_file)   # a bad key fails before anything loads
    # The report folder is checked now, not after minutes of training.
    check_output_path(out if out is not None else Path("runs") / config_file.stem, "--out", folder=True)
    from micro_rm.eval.report import format_table, load_results
    from micro_rm.experiment.runner import run_experiment

    folder = run_experiment(config, backbone=backbone, out=out, cache=cache_dir, progress=not as_json,
                            command=_command("experiment", config_file, backbone=backbone, out=out, cache=cache_dir))
    results = load_results(folder)
    emit({"report": str(folder), "seconds": results.get("seconds"),
          "methods": {k: v["mean"] for k, v in results["methods"].items()}}, as_json,
         f"{format_table(results)}\n\nreport: {folder / 'report.md'} (plots and results.json beside it)")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Report folder."),
    backbone: str = typer.Option("default", "--backbone", help="Backbone (static: seconds instead of "
                                 "minutes, for a quick look or tests)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", help="Synthetic prompts to generate "
                                          "(default: about 3 minutes on 2 quiet CPU cores, 1 with a warm cache)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The whole method on built-in synthetic data (4 user groups with known preferences, no
    download): MiCRo against its baselines and the oracle, with a report and plots.

    Example: micro-rm demo --out runs/demo
    """
    from micro_rm.atomic import check_output_path
    from micro_rm.eval.report import format_table, load_results
    from micro_rm.experiment.demo import run_demo

    check_output_path(out, "--out", folder=True)    # before minutes of work
    folder = run_demo(out=out, backbone=backbone, prompts=prompts, cache=cache_dir, progress=not as_json,
                      command=_command("demo", out=out, backbone=None if backbone == "default" else backbone,
                                       prompts=prompts, cache=cache_dir))
    results = load_results(folder)
    emit({"report": str(folder), "seconds": results.get("seconds"),
          "methods": {k: v["mean"] for k, v in results["methods"].items()}}, as_json,
         f"{format_table(results)}\n\nwall time {results.get('seconds', 0):.0f} s\n"
         f"report: {folder / 'report.md'}\nplots:  {', '.join(str(p) for p in sorted(folder.glob('*.png')))}")
