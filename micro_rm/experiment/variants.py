"""Stage 1's MiCRo grid (``stage1.variants``: protocol × regulariser × α) and which variant
becomes the `micro` row, chosen without reading a test label."""

from __future__ import annotations

from typing import Any

import numpy as np

from micro_rm.experiment.state import Run


def fit_variants(run: Run) -> None:
    """Step "stage 1": each MiCRo variant of the config fitted and scored on the test pairs."""
    s1 = run.config.stage1
    run.variants = []
    for v in s1.variants:
        alpha = s1.alpha if v.alpha is None else v.alpha
        model, history = run.fit(run.train_feats[v.protocol], "micro", balance=v.balance, alpha=alpha)
        stage1_eval = run.evaluate(model, run.test_feats[v.protocol])
        run.variants.append({"protocol": v.protocol, "balance": v.balance, "alpha": alpha, "model": model,
                             "val_nll": history["val_loss"], "history": history, "stage1_eval": stage1_eval})
        run.log(f"stage 1 micro ({v.protocol}, {v.balance}, α={alpha:g}): {stage1_eval['mean']:.3f}")


def select_variant(run: Run) -> None:
    """Step "select": ``run.chosen`` by ``stage1.select``, said in the report's notes."""
    usable = [v for v in run.variants if np.isfinite(v["val_nll"])]
    if run.config.stage1.select == "validation" and usable:
        chosen = within_one_standard_error(run, usable)
        run.selection = ("the first listed variant whose stage-1 validation NLL (mixture NLL on "
                         "held-out train prompts, no test labels) is within one standard error of "
                         "the lowest, paired over the validation pairs")
    else:
        chosen = run.variants[0]
        run.selection = "the first variant listed in the config (declared primary)"
    chosen["selected"] = True
    run.chosen = chosen
    run.notes.insert(0, f"`micro` = variant {chosen['protocol']} / {chosen['balance']} "
                        f"(α={chosen['alpha']:g}), chosen by {run.selection}.")


def within_one_standard_error(run: Run, variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The first listed variant whose validation NLL is not worse than the lowest by more than
    one standard error of the per-pair difference: NLL gaps of a few thousandths are noise
    and must not overrule the declared order."""
    import torch

    from micro_rm.train.stage1 import validation_split

    def per_pair(v: dict[str, Any]) -> np.ndarray:
        features = run.train_feats[v["protocol"]]
        held = validation_split(features.prompts, run.config.stage1.val_fraction)[1]
        rows = features.subset(held)
        with torch.no_grad():
            diff = torch.as_tensor(np.asarray(rows.chosen - rows.rejected, dtype=np.float32))
            route = torch.as_tensor(np.asarray(rows.route, dtype=np.float32))
            return -v["model"].log_likelihood(diff.to(run.device), route.to(run.device)).cpu().numpy()

    losses = [per_pair(v) for v in variants]
    best = int(np.argmin([l.mean() for l in losses]))
    for v, l in zip(variants, losses):
        gap = l - losses[best]
        if gap.mean() <= gap.std(ddof=1) / np.sqrt(len(gap)):
            return v
    return variants[best]   # a single validation pair has no standard error
