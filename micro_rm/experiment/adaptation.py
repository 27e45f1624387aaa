"""Stage 2 in the harness: each variant's router adapted, the `micro` rows, the budget curve."""

from __future__ import annotations

from typing import Any

import numpy as np

from micro_rm.experiment.state import Run, mean_row, row, seed_std


def adapt_variants(run: Run) -> None:
    """Step "stage 2": over every budget draw for the chosen variant (its rows are the report's:
    ``micro-stage1``, and ``micro``, the mean over the draws), over the first draw only for the
    others (their stage-2 column informs; nothing is selected on it)."""
    budget = run.config.stage2.budget
    for v in run.variants:
        seeds = run.seeds() if v is run.chosen else run.seeds()[:1]
        adapted = [run.adapt(v["model"], budget, seed) for seed in seeds]
        v["stage2_evals"] = [run.evaluate(model, run.test_ctx) for model, _ in adapted]
        v["adapted"], v["taus"] = adapted[0][0], [stage2_choice(info) for _, info in adapted]
        run.log(f"stage 2 micro ({v['protocol']}, {v['balance']}, α={v['alpha']:g}), B={budget}, "
                f"{len(seeds)} draw(s): {np.mean([e['mean'] for e in v['stage2_evals']]):.3f}")
    run.methods["micro-stage1"] = row(run.chosen["stage1_eval"], run.labels["micro-stage1"])
    run.methods["micro"] = mean_row(run.chosen["stage2_evals"], run.labels["micro"])


def budget_curve(run: Run) -> None:
    """Step "budget curve": the chosen variant's stage 2 at each B of ``run.budgets`` over the
    seeds (the draws at ``stage2.budget`` are reused), beside the reference rows."""
    run.curve = {}
    if not run.budgets:
        return
    means, stds = [], []
    for budget in run.budgets:
        if budget == run.config.stage2.budget:
            evals = run.chosen["stage2_evals"]
        else:
            evals = [run.evaluate(run.adapt(run.chosen["model"], budget, seed)[0], run.test_ctx)
                     for seed in run.seeds()]
        values = [e["mean"] for e in evals]
        means.append(float(np.mean(values)))
        stds.append(seed_std(values))
        run.log(f"budget {budget}: {means[-1]:.3f}" + (f" ± {stds[-1]:.3f}" if stds[-1] is not None else ""))
    names = {"micro stage 1": "micro-stage1", "single": "single", "single-ctx": "single-ctx", "oracle": "oracle"}
    reference = {label: run.methods[name]["mean"] for label, name in names.items() if name in run.methods}
    run.curve = {"budgets": run.budgets, "mean": means, "std": stds, "std_ddof": 1, "seeds": len(run.seeds()),
                 "reference": reference}


def stage2_choice(info: dict[str, Any]) -> float | str:
    """What stage 2 chose, as the report counts it: a τ of the heads update, "keep", or a named
    candidate such as "contexts 0.1" or "corrections 0.01"."""
    from micro_rm.train.selection import KEEP, Candidate, candidate_name

    if info["tau"] == KEEP:
        return KEEP
    chosen = Candidate(info["update"], info["tau"], info["wordings"])
    return info["tau"] if chosen == Candidate("heads", info["tau"]) else candidate_name(chosen)
