"""``micro-rm train``, ``micro-rm eval`` and ``micro-rm export-scalar``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import app, check_output, check_range, config_option, emit, field_docs, open_state
from micro_rm.cli.encode_cmd import MAX_TOKENS, feature_option, resolve_dtype
from micro_rm.cli.options import (BackboneName, CacheDir, CacheOnly, Device, Dtype, Eta, HfSplit, JsonFlag, MaxLength,
                                  ModelDir)
from micro_rm.errors import MicroRMError
from micro_rm.online.hedge import DEFAULT_ETA

_help = field_docs("micro_rm.train.config:Stage1Config")[0]
_option = config_option("micro_rm.train.config:Stage1Config")
MAX_HEADS = 64       # --heads auto fits every K up to --max-heads: a bound keeps that run finite


@app.command("train")
def train(
    data: str = typer.Option(..., "--data", help="Training pair file (jsonl, json, parquet, csv), "
                                                 "dataset folder or Hugging Face hub id."),
    hf_split: HfSplit = None,
    backbone_name: BackboneName = ...,
    heads: str = typer.Option(..., "--heads", help=_help("heads") + " auto: fit K = 1..--max-heads "
                              "and keep the smallest K within one standard error of the lowest "
                              "validation NLL (the curve is saved as heads_auto.png in --out)."),
    max_heads: int = typer.Option(8, "--max-heads", help=f"Largest K tried by --heads auto (1 to {MAX_HEADS})."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (config.json, "
                                                "model.safetensors, README.md)."),
    variant: str = _option("variant"),
    alpha: float = _option("alpha"),
    balance: str = _option("balance"),
    router: str = _option("router"),
    router_input: str = feature_option("router_input"),
    context_in_reward: bool = feature_option("context_in_reward"),
    context_encoding: str = feature_option("context_encoding"),
    context_temperature: float = _option("context_temperature"),
    context_dropout: float = _option("context_dropout"),
    epochs: int = _option("epochs"),
    lr: float = _option("lr"),
    batch_size: int = _option("batch_size"),
    grad_accum: int = _option("grad_accum"),
    val_fraction: float = _option("val_fraction"),
    seed: int = _option("seed"),
    device: Device = "cpu",
    cache_dir: CacheDir = None,
    max_length: MaxLength = None,
    dtype: Dtype = "float32",
    as_json: JsonFlag = False,
) -> None:
    """Fit stage 1 (the mixture of heads and its router, or a baseline) on a pair file.

    Texts are encoded once into the feature cache; training reads only cached features.

    Example: micro-rm train --data dsp-train.jsonl --backbone static --heads 4 --out runs/dsp
    (or --heads auto to choose K on held-out train prompts)
    """
    from micro_rm.features.base import FeatureSettings
    from micro_rm.train.config import Stage1Config
    from micro_rm.train.stage1 import fit_stage1

    # Every cheap check first, so a typo fails before the backbone loads.
    auto = heads == "auto"
    if not auto and not heads.isdigit():
        raise MicroRMError(f"--heads must be a number of heads or auto, got {heads!r}")
    if auto:
        check_range(max_heads, "--max-heads", 1, MAX_HEADS)
    check_range(max_length, "--max-length", 1, MAX_TOKENS)
    config = Stage1Config(heads=1 if auto else int(heads), variant=variant, alpha=alpha, balance=balance, router=router,
                          epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                          val_fraction=val_fraction, seed=seed, device=device,
                          context_temperature=context_temperature, context_dropout=context_dropout)
    settings = FeatureSettings.from_options(router_input, context_in_reward, context_encoding)
    check_output(out, "--out", {"--data": data, "--cache": cache_dir}, folder=True, model=True)

    from micro_rm.data.readers import read_pairs
    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize

    start = time.perf_counter()
    records = read_pairs(data, hf_split=hf_split)
    backbone = load_backbone(backbone_name, max_length=max_length, device=device,
                             dtype=resolve_dtype(dtype, backbone_name, device))
    features, stats = featurize(records, backbone, FeatureCache(cache_dir), **asdict(settings))
    if auto:
        from micro_rm.train.select_k import select_heads
        model, history, curve = select_heads(features, config, range(1, max_heads + 1))
        model.config.metrics["heads_auto"] = curve
        config.heads = curve["chosen"]
    else:
        model, history = fit_stage1(features, config)
    model.config.data = {"source": str(data), "pairs": len(records),
                         "attributes": sorted({a for a in features.attributes if a is not None})}
    model.save_pretrained(out)
    if auto:
        plot_k_curve(curve, out / "heads_auto.png", title=str(data))
    result = {"out": str(out), "variant": config.variant, "heads": config.heads,
              "train_loss": history["train_loss"], "validation_loss": history["val_loss"],
              "best_epoch": history["best_epoch"], "pairs": history["pairs"],
              "encoded_texts": stats.encoded, "train_seconds": round(history["seconds"], 3),
              **({"heads_auto": curve} if auto else {}),
              "seconds": round(time.perf_counter() - start, 3)}
    emit(result, as_json,
         f"trained {config.variant} (K={config.heads}) on {history['pairs']['train']} pairs in "
         f"{history['seconds']:.1f} s: train loss {history['train_loss']:.4f}, validation loss "
         f"{history['val_loss']:.4f} (epoch {history['best_epoch']})\nmodel: {out}")


def plot_k_curve(curve: dict, path: Path, title: str = "") -> None:
    """Validation NLL ± one standard error against K, the chosen K marked."""
    from micro_rm.eval.plots import _figure

    with _figure(path, "Choosing K: validation NLL ± 1 SE (over prompts)" + (f"\n{title}" if title else ""),
                 "number of heads K", "validation NLL", (5.5, 3.8)) as (fig, ax):
        ax.errorbar(curve["grid"], curve["nll"], yerr=curve["se"], marker="o", capsize=3, label="validation NLL")
        best = curve["grid"].index(curve["best"])
        ax.axhline(curve["nll"][best] + curve["se"][best], linestyle="--", color="grey", label="best + 1 SE")
        ax.axvline(curve["chosen"], linestyle=":", color="red", label=f"chosen K = {curve['chosen']}")
        ax.set_xticks(curve["grid"])
        ax.legend()


@app.command("eval")
def evaluate(
    model_dir: ModelDir = ...,
    data: str = typer.Option(..., "--data", help="Test pair file, dataset folder or hub id."),
    hf_split: HfSplit = None,
    cache_dir: CacheDir = None,
    cache_only: CacheOnly = False,
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a report folder "
                                          "(results.json, report.md, head × attribute and router "
                                          "heatmaps) here."),
    state: Optional[str] = typer.Option(None, "--state", help="Per-user state (the service's or "
                                        "`micro-rm feedback`'s --state) to evaluate as --user."),
    user: Optional[str] = typer.Option(None, "--user", help="Evaluate as this user: the router's "
                                       "weights sharpened by the user's feedback (online Hedge), "
                                       "exactly as the service scores for them."),
    eta: Eta = DEFAULT_ETA,
    as_json: JsonFlag = False,
) -> None:
    """Routed pairwise accuracy per attribute (and its mean), every head per attribute, NLL,
    expected calibration error and router statistics (mean entropy, head usage, weights per
    attribute).

    The backbone and feature settings come from the model's config.json. With --state and --user
    the routing is that user's: w = normalise(f_ψ(x, c) ⊙ exp(−η S_user)).

    Example: micro-rm eval --model runs/dsp/model --data dsp-test.jsonl --report runs/dsp-eval
    Example: micro-rm eval --model runs/dsp/model --data ana-test.jsonl --state state.db --user ana
    """
    import numpy as np

    from micro_rm.data.readers import read_pairs
    from micro_rm.data.records import check_user_id
    from micro_rm.eval.metrics import (expected_calibration_error, head_attribute_matrix, nll,
                                       pairwise_accuracy, router_statistics)
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.text import featurize_for
    from micro_rm.online.hedge import routed_probabilities

    # Before any work: a bad --report must not cost an evaluation.
    check_output(report, "--report", {"--model": model_dir, "--data": data, "--state": state}, folder=True)
    if (state is None) != (user is None):
        raise MicroRMError("--user and --state go together: evaluating as a user reads that user's "
                           "state (pass both, or neither to evaluate the router alone)")
    start = time.perf_counter()
    model = MixtureRewardModel.from_pretrained(model_dir)
    user_loss = None
    if user is not None:    # a missing store, an unknown user or another model's store is an error
        check_user_id(user, "--user")
        with open_state(state, model, reader="eval") as store:
            user_loss = store.get(user).cumulative_loss      # the store refuses a non-finite state
    features = featurize_for(model, read_pairs(data, hf_split=hf_split), cache_dir, allow_encode=not cache_only)
    if user_loss is None:
        probs = model.predict_proba(features.chosen, features.rejected, features.route)
    else:  # the service's routing for this user: the router's weights sharpened by their Hedge state
        log_prior = np.log(np.clip(model.router_weights(features.route).astype(np.float64), 1e-300, None))
        probs = routed_probabilities(log_prior, model.head_probs(features.chosen, features.rejected), user_loss, eta)
    heads = head_attribute_matrix(model.head_probs(features.chosen, features.rejected), features.attributes)
    router = router_statistics(model.router_weights(features.route), features.attributes)
    result = {**pairwise_accuracy(probs, features.attributes), "nll": nll(probs),
              "ece": expected_calibration_error(probs), "heads": heads, "router": router,
              "model": model_dir, "data": data, **({"user": user, "state": state} if user else {})}
    lines = [f"{result['pairs']} pairs: mean accuracy {result['mean_accuracy']:.4f}, NLL {result['nll']:.4f}, "
             f"ECE {result['ece']:.4f}",
             *(f"  {name:24s} {acc:.4f}" for name, acc in result["per_attribute"].items()),
             f"best head per attribute (oracle): {heads['oracle_mean_accuracy']:.4f}",
             f"router: mean entropy {router['mean_entropy']:.3f} nats, head usage "
             + " / ".join(f"{u:.3f}" for u in router["head_usage"])]
    if report is not None:
        from micro_rm.eval.report import write_report

        per_attribute = result["per_attribute"] or {"all": result["mean_accuracy"]}
        folder = write_report({
            "title": f"micro-rm eval: {model_dir} on {data}",
            "dataset": {"name": str(data), "test_pairs": result["pairs"], "attributes": list(per_attribute)},
            "methods": {model.config.variant: {"mean": result["mean_accuracy"], "per_attribute": per_attribute,
                                               "nll": result["nll"], "ece": result["ece"],
                                               "supervision": "as trained"}},
            "head_attribute": {k: heads[k] for k in ("attributes", "accuracy")},
            "router_weights": router["per_attribute"] if model.config.num_heads > 1 else None,
            "command": "micro-rm eval --model " + str(model_dir) + " --data " + str(data),
            "seconds": round(time.perf_counter() - start, 1),
        }, report)
        result["report"] = str(folder)
        lines.append(f"report: {folder / 'report.md'}")
    emit(result, as_json, "\n".join(lines))


@app.command("export-scalar")
def export_scalar_cmd(
    model_dir: ModelDir = ...,
    out: Path = typer.Option(..., "--out", help="Folder for the single-reward model."),
    context: Optional[str] = typer.Option(None, "--context", help="Text the router reads (a context "
                                          "sentence, optionally with a typical prompt); its routing "
                                          "weights are frozen in."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Comma-separated weights, one per "
                                          "head, e.g. 0.5,0.5,0,0 (normalised)."),
    as_json: JsonFlag = False,
) -> None:
    """Write a copy of a model with one fixed weight vector over its heads, for tools that want
    one reward per response (score = Σ_k w_k r_k).

    Example: micro-rm export-scalar --model runs/dsp --out runs/dsp-concise --context "Be concise."
    """
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.pretrained import export_scalar

    if (context is None) == (weights is None):
        raise MicroRMError("give exactly one of --context TEXT or --weights w1,w2,...")
    if context is not None:
        from micro_rm.data.records import check_unicode
        if not context.strip():
            raise MicroRMError("--context is empty; give the context sentence the router should read")
        check_unicode(context, "--context")
    check_output(out, "--out", {"--model": model_dir}, folder=True, model=True)
    model = MixtureRewardModel.from_pretrained(model_dir)
    if weights is not None:
        try:
            values = [float(w) for w in weights.split(",")]
        except ValueError:
            raise MicroRMError(f"--weights must be comma-separated numbers, got {weights!r}") from None
        scalar = export_scalar(model, out, weights=values)
    else:
        from micro_rm.scoring.engine import RewardScorer

        # The route the service builds for this context and an empty prompt, exactly as in training
        # (no context where the router was trained on the prompt alone).
        scorer = RewardScorer.load(model)
        route = scorer.route_features(scorer.backbone.encode(scorer.route_items("", context)), [context])[0]
        scalar = export_scalar(model, out, route=route, context=context)
    fixed = scalar.config.training["exported"]["weights"]
    emit({"out": str(out), "weights": fixed, "context": context}, as_json,
         f"wrote a single-reward model to {out} (head weights {', '.join(f'{w:.3f}' for w in fixed)})")
