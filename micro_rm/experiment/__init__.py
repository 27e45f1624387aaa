"""Experiments: a YAML config → the paper's whole protocol → a report folder; and ``micro-rm demo``.

Names load on first use, so importing the package (e.g. for the CLI's ``--help``) costs no torch.

>>> from micro_rm.experiment import ExperimentConfig, run_experiment   # doctest: +SKIP
>>> run_experiment(ExperimentConfig.from_yaml("configs/dsp.yaml"), out="runs/dsp")  # doctest: +SKIP
"""

import importlib
from typing import Any

_EXPORTS = {
    "ExperimentConfig": "micro_rm.experiment.config",
    "run_experiment": "micro_rm.experiment.runner",
    "load_records": "micro_rm.experiment.runner",
    "write_experiment_report": "micro_rm.experiment.report",
    "run_demo": "micro_rm.experiment.demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'micro_rm.experiment' has no attribute {name!r}")
