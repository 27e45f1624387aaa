"""``micro-rm adapt`` (stage 2), ``micro-rm feedback`` and ``micro-rm user show|reset`` (per-user
online Hedge state)."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from micro_rm.cli.app import app, check_output, config_option, emit, field_docs, load_features, open_state
from micro_rm.cli.options import CacheDir, CacheOnly, Eta, HfSplit, JsonFlag, ModelDir
from micro_rm.data.records import check_user_id
from micro_rm.online.hedge import DEFAULT_ETA

logger = logging.getLogger(__name__)

user_app = typer.Typer(help="Show or reset a user's online Hedge state.", no_args_is_help=True)
app.add_typer(user_app, name="user")

State = Annotated[str, typer.Option(
    "--state", help="Per-user state: a SQLite file (created on first feedback) or a postgresql:// URL.")]
UserId = Annotated[str, typer.Argument(help="User id.")]
_help, _default = field_docs("micro_rm.train.config:AdaptConfig")
_option = config_option("micro_rm.train.config:AdaptConfig")


@app.command("adapt")
def adapt(
    model_dir: ModelDir = ...,
    data: str = typer.Option(..., "--data", help="Pairs with a `context` (jsonl, json, parquet, csv, "
                                                 "dataset folder or hub id); the budget is drawn "
                                                 "per attribute."),
    hf_split: HfSplit = None,
    out: Path = typer.Option(..., "--out", help="Folder for the adapted model."),
    budget: int = _option("budget"),
    tau: str = typer.Option(str(_default("tau")), "--tau", help=_help("tau")),
    folds: int = _option("folds"),
    seed: int = _option("seed"),
    cache_dir: CacheDir = None,
    cache_only: CacheOnly = False,
    as_json: JsonFlag = False,
) -> None:
    """Stage 2: adapt a stage-1 model's router (variant micro) to contexts from a budget of context pairs.

    The heads stay frozen. Each context the budget speaks for takes one Hedge step on the mean
    loss of its pairs, and the stage-1 router is kept unless cross-validation on held-out budget
    prompts (and held-out wordings, where an attribute's budget has several) shows that adapting
    helps (docs/personalization.md).

    Example: micro-rm adapt --model runs/dsp --data dsp-train.jsonl --budget 50 --tau auto
    --out runs/dsp-adapted
    """
    from micro_rm.train.config import AdaptConfig

    config = AdaptConfig(budget=budget, tau="auto" if tau.strip().lower() == "auto" else tau, folds=folds, seed=seed)
    check_output(out, "--out", {"--model": model_dir, "--data": data, "--cache": cache_dir}, folder=True, model=True)

    from micro_rm.data.readers import read_pairs
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.train.adapt import adapt_from_records, check_adaptable

    start = time.perf_counter()
    model = MixtureRewardModel.from_pretrained(model_dir)
    check_adaptable(model)
    records = read_pairs(data, hf_split=hf_split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted, info = adapt_from_records(model, records, config, cache_dir=cache_dir, allow_encode=not cache_only)
    for warning in caught:
        logger.warning("%s", warning.message)
    adapted.config.data = {**adapted.config.data, "stage2_source": str(data)}
    adapted.save_pretrained(out)
    result = {"out": str(out), "pairs": info["pairs"], "pairs_per_group": info["pairs_per_group"],
              "tau": info["tau"], "update": info["update"], "wordings": info["wordings"], "cv_nll": info["cv_nll"],
              "budget_nll_before": info["stage1_nll"], "budget_nll_after": info["nll"],
              "adapt_seconds": round(info["seconds"], 3), "seconds": round(time.perf_counter() - start, 3)}
    cv = ", ".join(f"{f'τ={t}' if t[:1].isdigit() else t}: {v:.4f}" for t, v in info["cv_nll"].items())
    emit(result, as_json,
         f"adapted the router on {info['pairs']} context pairs in {info['seconds']:.1f} s with "
         f"{_candidate_text(info)} (chosen by cross-validation: {cv})\n"
         f"budget NLL {info['stage1_nll']:.4f} → {info['nll']:.4f}\nmodel: {out}")


@app.command("feedback")
def feedback(
    model_dir: ModelDir = ...,
    state: State = ...,
    user: str = typer.Option(..., "--user", help="User id."),
    data: str = typer.Option(..., "--data", help="The user's labelled pairs (chosen = what they preferred)."),
    hf_split: HfSplit = None,
    eta: Eta = DEFAULT_ETA,
    cache_dir: CacheDir = None,
    cache_only: CacheOnly = False,
    as_json: JsonFlag = False,
) -> None:
    """Add a user's labelled pairs to their online Hedge state, in one transaction.

    Each head's clipped, scaled log-loss is summed into the user's S; routing for that user
    becomes normalise(router weights · exp(−η S)) (--eta here only sets the printed weights).

    Example: micro-rm feedback --model runs/dsp --state state.db --user ana --data ana.jsonl
    """
    from micro_rm.atomic import check_not_input
    from micro_rm.online import pair_losses

    check_user_id(user, "--user")
    check_not_input(state, "--state", {"--data": data, "--model": model_dir})
    # Read and score the pairs before the store opens: bad data must not create a state file.
    model, records, features = load_features(model_dir, data, hf_split, cache_dir, cache_only)
    losses = pair_losses(model.head_probs(features.chosen, features.rejected))
    with open_state(state, model) as store:
        after = store.apply_feedback(user, losses, payloads=records)
        result = _user_result(after, store.location, eta)
    emit({**result, "added": len(records)}, as_json,
         f"added {len(records)} pair(s) for user {user!r}\n{_user_summary(result)}")


@user_app.command("show")
def show(
    user: UserId = ...,
    state: State = ...,
    eta: Eta = DEFAULT_ETA,
    as_json: JsonFlag = False,
) -> None:
    """A user's feedback count, per-head cumulative loss S and Hedge factor normalise(exp(−η S)).

    Example: micro-rm user show ana --state state.db
    """
    check_user_id(user, "user")
    with open_state(state) as store:
        result = _user_result(store.get(user), store.location, eta)
    emit(result, as_json, _user_summary(result))


@user_app.command("reset")
def reset(
    user: UserId = ...,
    state: State = ...,
    as_json: JsonFlag = False,
) -> None:
    """Forget a user's state and feedback log (their routing returns to the router's).

    Example: micro-rm user reset ana --state state.db
    """
    check_user_id(user, "user")
    with open_state(state) as store:
        before = store.reset(user)
    emit({"user": user, "state": str(state), "reset": True, "num_feedback_before": before.num_feedback},
         as_json, f"reset user {user!r} (forgot {before.num_feedback} feedback pair(s))")


def _user_result(user_state, location: str, eta: float) -> dict:
    """The JSON view of a user's state. ``hedge_factor`` is normalise(exp(−η S)): the user's
    weights under a uniform router (routing multiplies it by the router's weights)."""
    import numpy as np

    factor = user_state.weights(np.zeros(user_state.num_heads), eta)
    return {"user": user_state.user_id, "state": location, "model_id": user_state.model_id,
            "num_feedback": user_state.num_feedback, "cumulative_loss": user_state.cumulative_loss.tolist(),
            "eta": eta, "hedge_factor": factor.tolist()}


def _user_summary(result: dict) -> str:
    rows = "\n".join(f"  head {k}: S = {s:.4f}   weight {w:.4f}"
                     for k, (s, w) in enumerate(zip(result["cumulative_loss"], result["hedge_factor"])))
    return (f"user {result['user']!r}: {result['num_feedback']} feedback pair(s), η = {result['eta']:g} "
            f"(weights under a uniform router)\n{rows}")


def _candidate_text(info: dict) -> str:
    """The chosen candidate as printed: "τ=0.1", "the contexts update at τ=1", "τ=0.1, new
    wordings as corrections", or "τ=keep" (stage 2 kept the stage-1 router)."""
    tau = info["tau"]
    if not isinstance(tau, (int, float)):
        return f"τ={tau}"
    text = f"the contexts update at τ={tau:g}" if info.get("update") == "contexts" else f"τ={tau:g}"
    return text + (", new wordings as corrections" if info.get("wordings") == "corrections" else "")
