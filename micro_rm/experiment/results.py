"""The harness's last steps: ``results.json`` assembled, the models saved, the report folder written."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np

from micro_rm.eval.bootstrap import LEVEL, RESAMPLES, PromptBootstrap, excludes_zero, percentile_interval
from micro_rm.eval.metrics import head_attribute_matrix, router_statistics
from micro_rm.eval.report import _scalar
from micro_rm.experiment.report import write_experiment_report
from micro_rm.experiment.state import Run, mean_row

PRIMARY_METHODS = ("single", "static", "shared-base", "single-ctx", "static-ctx", "hyre", "micro-hyre",
                   "micro-stage1", "micro", "oracle")
# Paired differences reported with intervals: (method, against); MiCRo against the baseline given
# the same information, and what stage 2 adds to stage 1.
DIFFERENCES = (("micro-stage1", "single-ctx"), ("micro", "single-ctx"), ("micro", "micro-stage1"))


def assemble_results(run: Run) -> None:
    """Step "results": ``run.results``, every row's ``outcome`` replaced by its intervals."""
    config, chosen, test_ctx = run.config, run.chosen, run.test_ctx
    model = chosen["model"]
    heads = head_attribute_matrix(model.head_probs(test_ctx.chosen, test_ctx.rejected), test_ctx.attributes)
    stage2_router = router_statistics(chosen["adapted"].router_weights(test_ctx.route), test_ctx.attributes)
    stage1_router = router_statistics(model.router_weights(run.test_feats[chosen["protocol"]].route),
                                      test_ctx.attributes)
    ordered = {name: run.methods[name] for name in PRIMARY_METHODS if name in run.methods}
    differences = intervals(run, ordered)
    name = config.data.builder + (f" → {config.eval_data.builder}" if run.cross else "")
    run.results = {
        "title": config.title,
        "dataset": {"name": name, "train_pairs": len(run.train), "test_pairs": len(run.test),
                    "attributes": run.attributes,
                    **({"stage2_pool_pairs": len(run.pool)} if run.cross else {})},
        "settings": {"backbone": run.backbone_name, "heads": config.stage1.heads,
                     "stage1 epochs": config.stage1.epochs, "budget": config.stage2.budget,
                     "tau": config.stage2.tau,
                     "stage2": f"adapt (candidates chosen by {config.stage2.folds}-fold cross-validation)",
                     "hyre_m": config.hyre.m,
                     "seeds": config.budget_curve.seeds,
                     "context_in_reward": config.backbone.context_in_reward,
                     "micro": f"{chosen['protocol']} / {chosen['balance']} (α={chosen['alpha']:g})"},
        "methods": ordered,
        "differences": differences,
        "bootstrap": {"unit": "test prompt", "resamples": RESAMPLES, "level": LEVEL, "seed": config.seed},
        "variants": [{"protocol": v["protocol"], "balance": f"{v['balance']} (α={v['alpha']:g})",
                      "stage1": v["stage1_eval"]["mean"],
                      "stage2": float(np.mean([e["mean"] for e in v["stage2_evals"]])),
                      "stage2_draws": len(v["stage2_evals"]),
                      "tau": _tau_label(config.stage2.tau, v["taus"]), "val_nll": v["val_nll"],
                      "selected": bool(v.get("selected")),
                      "stage1_per_attribute": v["stage1_eval"]["per_attribute"],
                      "stage2_per_attribute": mean_row(v["stage2_evals"], "")["per_attribute"]}
                     for v in run.variants],
        "selection": run.selection,
        "head_attribute": heads,
        "router_weights": stage2_router["per_attribute"],
        "router": {"stage1": _router_summary(stage1_router), "stage2": _router_summary(stage2_router),
                   "stage2_taus": _tau_counts(chosen["taus"])},
        "budget_curve": run.curve,
        "paper": dict(config.paper),
        "notes": run.notes + list(config.notes),
        "encoding": {"texts_encoded": run.encoded, "seconds": round(run.encode_seconds, 1)},
        "machine": machine_description(),
        "command": run.command,
    }


def intervals(run: Run, methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace each row's per-pair ``outcome`` by 95% bootstrap intervals of its mean and
    per-attribute accuracies (test prompts resampled, the same draws for every method), and
    return the paired differences named in ``DIFFERENCES``."""
    boot = PromptBootstrap(run.test_ctx.prompts, run.test_ctx.attributes, seed=run.config.seed)
    samples = {}
    for name, row in methods.items():
        samples[name] = boot.samples(*row.pop("outcome"))
        row.update(boot.intervals(samples[name]))
    differences = []
    for name, against in DIFFERENCES:
        if name in samples and against in samples:
            ci = percentile_interval(samples[name]["mean"] - samples[against]["mean"])
            differences.append({"method": name, "against": against, "ci95": ci, "excludes_zero": excludes_zero(ci),
                                "difference": methods[name]["mean"] - methods[against]["mean"]})
    return differences


def save_models(run: Run) -> None:
    """Step "save models": the chosen variant's stage-1 model and its seed-0 stage-2 model, for
    `micro-rm eval`."""
    for name, model in (("model-stage1", run.chosen["model"]), ("model", run.chosen["adapted"])):
        model.config.data = {**model.config.data, "source": run.config.data.source or run.config.data.builder,
                             "pairs": len(run.train)}
        model.save_pretrained(run.out / name)


def write_report(run: Run) -> None:
    """Step "report": the wall times, then ``results.json``, ``report.md`` and the plots in ``run.out``."""
    results = run.results
    results["seconds"] = round(time.perf_counter() - run.start, 1)
    results["timing"] = {**{step: round(s, 1) for step, s in run.timing.items()},
                         "other": round(results["seconds"] - sum(run.timing.values()), 1)}
    run.folder = write_experiment_report(results, run.out)
    run.log(f"report: {run.folder / 'report.md'}")


def machine_description() -> str:
    """CPU model, cores, memory and torch build of this machine, for the report header."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo", encoding="utf-8") as fh:
        cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    memory = ""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2 ** 30:.0f} GiB RAM"
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()}, torch {torch.__version__}"


def _tau_counts(chosen: Sequence[float | str]) -> dict[str, int]:
    """How often each τ was chosen over the budget draws: numbers ascending, then named choices."""
    counts = Counter(chosen)
    order = sorted(counts, key=lambda t: (isinstance(t, str), str(t) if isinstance(t, str) else t))
    return {_scalar(t): counts[t] for t in order}


def _tau_label(tau: Any, chosen: Sequence[float | str]) -> Any:
    if tau != "auto":
        return tau
    common = _scalar(Counter(chosen).most_common(1)[0][0])
    return f"auto → {common}" if len(set(chosen)) == 1 else f"auto → {common} (mostly)"


def _router_summary(stats: dict[str, Any]) -> dict[str, Any]:
    return {key: stats[key] for key in ("mean_entropy", "head_usage", "top_head_share")}
