"""Experiments: a YAML config → the paper's whole protocol → a report folder; and ``micro-rm demo``.

Names load on first use, so importing the package (e.g. for the CLI's ``--help``) costs no torch.

>>> from micro_rm.experiment import ExperimentConfig, run_experiment   # doctest: +SKIP
>>> run_experiment(ExperimentConfig.from_yaml("configs/dsp.yaml"), out="runs/dsp")  # doctest: +SKIP
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "ExperimentConfig": "micro_rm.experiment.config",
    "run_experiment": "micro_rm.experiment.runner",
    "load_records": "micro_rm.experiment.data",
    "write_experiment_report": "micro_rm.experiment.report",
    "run_demo": "micro_rm.experiment.demo",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.experiment", _EXPORTS)
