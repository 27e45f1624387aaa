"""``micro-rm experiment`` (the paper's protocol from a YAML config) and ``micro-rm demo``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from micro_rm.cli.app import app, check_output, emit
from micro_rm.cli.options import CacheDir, JsonFlag
from micro_rm.errors import MicroRMError

MAX_DEMO_PROMPTS = 100_000
Force = Annotated[bool, typer.Option("--force", help="Write into --out even when it holds files that no earlier "
                                     "report wrote (without it such a folder is refused and left untouched).")]


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
    cache_dir: CacheDir = None,
    as_json: JsonFlag = False,
    force: Force = False,
) -> None:
    """Run the paper's whole protocol from a config: data → split → encode (cached) → stage 1
    (MiCRo grid, single, static, shared-base) → stage 2 → HyRe, MiCRo-HyRe → oracle → budget
    curve → a report folder (report.md, results.json, PNG plots).

    Example: micro-rm experiment configs/dsp.yaml --out runs/dsp
    """
    from micro_rm.experiment.config import ExperimentConfig

    config = ExperimentConfig.from_yaml(config_file)   # a bad key fails before anything loads
    # The report folder is checked now, not after minutes of training.
    folder = out if out is not None else Path("runs") / config_file.stem
    check_output(folder, "--out", {"CONFIG.yaml": config_file, "--cache": cache_dir}, folder=True)
    from micro_rm.eval.report import format_table, load_results
    from micro_rm.experiment.runner import run_experiment

    folder = run_experiment(config, backbone=backbone, out=out, cache=cache_dir, progress=not as_json, force=force,
                            command=_command("experiment", config_file, backbone=backbone, out=out, cache=cache_dir))
    results = load_results(folder)
    emit({"report": str(folder), "seconds": results.get("seconds"),
          "methods": {k: v["mean"] for k, v in results["methods"].items()}}, as_json,
         f"{format_table(results)}\n\nreport: {folder / 'report.md'} (plots and results.json beside it)")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Report folder."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone (default: static, under a "
                                           "minute; `default` runs the MiniLM transformer itself, 1-3 minutes)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", help="Synthetic prompts to generate "
                                          "(default 100: about a minute on 2 CPU cores from an empty feature cache)."),
    cache_dir: CacheDir = None,
    as_json: JsonFlag = False,
    force: Force = False,
) -> None:
    """The whole method on built-in synthetic data (4 user groups with known preferences, no
    download): MiCRo against its baselines and the oracle, with a report and plots.

    Example: micro-rm demo --out runs/demo
    """
    from micro_rm.eval.report import format_table, load_results
    from micro_rm.experiment.demo import run_demo

    check_output(out, "--out", {"--cache": cache_dir}, folder=True)    # before minutes of work
    if prompts is not None and prompts > MAX_DEMO_PROMPTS:  # the least is demo_config's to say
        raise MicroRMError(f"--prompts must be at most {MAX_DEMO_PROMPTS}, got {prompts}")
    folder = run_demo(out=out, backbone=backbone, prompts=prompts, cache=cache_dir, progress=not as_json, force=force,
                      command=_command("demo", out=out, backbone=backbone, prompts=prompts, cache=cache_dir))
    results = load_results(folder)
    emit({"report": str(folder), "seconds": results.get("seconds"),
          "methods": {k: v["mean"] for k, v in results["methods"].items()}}, as_json,
         f"{format_table(results)}\n{new_user_line(results)}\nreport: {folder / 'report.md'}\n"
         f"plots:  {', '.join(str(p) for p in sorted(folder.glob('*.png')))}\n"
         f"done in {results.get('seconds', 0):.0f} s ({results.get('timing', {}).get('encode', 0):.0f} s of it "
         "encoding texts, which a rerun reads from the feature cache)")


def new_user_line(results: dict, labels: int = 5) -> str:
    """One line on the new-user curve of ``results``: a user known only by id, with no labels
    and after ``labels`` of them, e.g. "a new user known only by id: 0.550 with no labels, 0.710
    after 5 (random pairs)" (empty when the run drew no curve)."""
    curve = results.get("user_curve") or {}
    n = curve.get("n", [])
    if 0 not in n or labels not in n:
        return ""
    parts = [f"{curve['curves'][name]['mean'][n.index(labels)]:.3f} after {labels} ({how} pairs)"
             for name, how in (("no context / random", "random"), ("no context / active", "suggested"))
             if name in curve.get("curves", {})]
    if not parts:
        return ""
    start = next(iter(curve["curves"].values()))["mean"][n.index(0)]
    return f"\na new user known only by id: {start:.3f} with no labels, {', '.join(parts)}\n"
