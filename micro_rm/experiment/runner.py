"""The paper's protocol in one call: ``run_experiment(config)`` → a report folder.

The protocol is ``STEPS``, run in order on one :class:`~micro_rm.experiment.state.Run`
(METHOD.md, "Evaluation protocol"); each step's docstring says what it does. Stage 1 trains on
``data``'s train split; the stage-2 budget and the oracle come from ``eval_data``'s train split,
and every method is evaluated on ``eval_data``'s test split (both default to ``data``).

>>> folder = run_experiment(ExperimentConfig.from_yaml("configs/demo.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from micro_rm.errors import MicroRMError
from micro_rm.eval.report import load_results
from micro_rm.experiment.adaptation import adapt_variants, budget_curve
from micro_rm.experiment.baselines import fit_baselines, hyre_rows, oracle_row, supervision_labels
from micro_rm.experiment.config import ExperimentConfig
from micro_rm.experiment.data import encode, load_data
from micro_rm.experiment.phrasings import heldout_phrasings
from micro_rm.experiment.results import assemble_results, save_models, write_report
from micro_rm.experiment.state import Run
from micro_rm.experiment.users import new_users, per_user_hedge
from micro_rm.experiment.variants import fit_variants, select_variant


class Step(NamedTuple):
    name: str
    run: Callable[[Run], None]
    timed: Optional[str] = None     # the report's timing bucket (state.TIMED_STEPS), if any


STEPS = (
    Step("data", load_data),
    Step("encode", encode, "encode"),
    Step("stage 1", fit_variants, "stage 1"),
    Step("select", select_variant),
    Step("supervision", supervision_labels),
    Step("stage 2", adapt_variants, "stage 2"),
    Step("baselines", fit_baselines, "stage 1"),
    Step("hyre", hyre_rows),
    Step("oracle", oracle_row, "stage 1"),
    Step("budget curve", budget_curve, "curves"),
    Step("results", assemble_results),
    Step("users", per_user_hedge),
    Step("held-out phrasings", heldout_phrasings, "curves"),
    Step("new users", new_users, "curves"),
    Step("save models", save_models),
    Step("report", write_report),
)


def run_experiment(config: ExperimentConfig, *, backbone: Any = None, out: str | os.PathLike | None = None,
                   cache: str | os.PathLike | None = None, progress: bool = True,
                   command: Optional[str] = None, force: bool = False) -> Path:
    """Run the whole protocol of ``config`` and write its report folder; return the folder.

    ``backbone`` overrides ``config.backbone.name`` (a name, or a loaded backbone); ``out`` is
    the report folder (default ``runs/<config file stem>``); ``cache`` the feature-cache folder
    (default ``$MICRO_RM_CACHE`` or the user cache dir). A folder that holds files but no report
    of an earlier run is refused unless ``force`` (:func:`check_report_folder`).
    """
    run = Run(config, backbone=backbone, out=out, cache=cache, progress=progress, command=command)
    check_report_folder(run.out, force=force)
    for step in STEPS:
        start = time.perf_counter()
        step.run(run)
        if step.timed:
            run.timing[step.timed] += time.perf_counter() - start
    return run.folder


__all__ = ["STEPS", "Step", "run_experiment"]


def check_report_folder(folder: str | os.PathLike, *, force: bool = False) -> None:
    """Refuse to write a report into ``folder`` unless it is new, empty or an earlier run's (it
    holds a ``results.json`` that :func:`~micro_rm.eval.report.load_results` reads), so a run
    never mixes its files with others. ``force`` writes anyway (files of the same names are replaced)."""
    folder = Path(folder)
    if force or not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        load_results(folder)
    except MicroRMError:
        raise MicroRMError(f"--out {folder}: holds files that no micro-rm report wrote (no readable results.json), "
                           "so writing there would mix them; choose an empty or new folder, or pass --force") from None
