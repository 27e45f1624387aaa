"""``micro-rm heads``: describe, label, audit, mask and merge a model's heads.

``micro-rm heads MODEL --data F --report DIR`` is short for ``micro-rm heads profile MODEL …``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from micro_rm.atomic import atomic_open
from micro_rm.cli.app import app, check_output, check_range, emit, load_features
from micro_rm.cli.options import DATA_HELP, CacheDir, CacheOnly, HfSplit, JsonFlag
from micro_rm.errors import MicroRMError


class _ProfileByDefault(TyperGroup):
    """A group whose first argument, when it is not a command name, is the MODEL of ``profile``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["profile", *args]
        return super().parse_args(ctx, args)


heads_app = typer.Typer(cls=_ProfileByDefault, no_args_is_help=True,
                        help="Understand and control the heads: profile and label them, audit them on "
                             "safety data, mask or merge them.\n\nExample: micro-rm heads runs/dsp "
                             "--data dsp-test.jsonl --report runs/dsp-heads")
app.add_typer(heads_app, name="heads")

MODEL_ARG = typer.Argument(..., help="Model folder (or Hugging Face hub id).", show_default=False)
MAX_EPOCHS = 10_000  # heads merge --epochs: re-fitting the router converges in tens


@heads_app.command("profile")
def profile_cmd(
    model_dir: str = MODEL_ARG,
    data: str = typer.Option(..., "--data", help=DATA_HELP + " Held-out pairs describe the heads best."),
    report: Path = typer.Option(..., "--report", help="Folder for heads.json, report.md and the figures."),
    hf_split: HfSplit = None,
    relabel: bool = typer.Option(False, "--relabel", help="Overwrite the labels stored in the model's "
                                 "config.json (by default they are written only when it has none, so "
                                 "labels a person edited are kept)."),
    cache_dir: CacheDir = None,
    cache_only: CacheOnly = False,
    as_json: JsonFlag = False,
) -> None:
    """Describe each head and label it (the label is stored in the model's config.json).

    The report gives each head's accuracy per attribute, the response statistics its reward
    follows (length, readability, lists, hedging, refusals, sentiment, formality, prompt
    overlap, …), the pairs where it disagrees most with the others and a head × head agreement
    matrix.

    Example: micro-rm heads runs/dsp --data dsp-test.jsonl --report runs/dsp-heads
    """
    from micro_rm.heads.labels import save_labels
    from micro_rm.heads.profile import profile_heads
    from micro_rm.heads.report import write_heads_report

    check_output(report, "--report", {"MODEL": model_dir, "--data": data}, folder=True)
    model, records, features = load_features(model_dir, data, hf_split, cache_dir, cache_only)
    profile = profile_heads(model, features, records)
    stored = list(model.config.head_labels)
    if (relabel or not stored) and (Path(model_dir) / "config.json").is_file():
        stored = save_labels(model_dir, profile["labels"])
    profile["stored_labels"] = stored
    write_heads_report(profile, report, title=f"{model_dir} on {data}")
    emit({"report": str(report), "labels": profile["labels"], "stored_labels": stored,
          "clusters": profile["agreement"]["clusters"], "routed_accuracy": profile["routed"]["mean_accuracy"]},
         as_json, "\n".join([f"head {k}: {label}" for k, label in enumerate(profile["labels"])]
                            + [f"report: {report / 'report.md'}"]))


@heads_app.command("label")
def label_cmd(
    model_dir: str = MODEL_ARG,
    head: int = typer.Option(..., "--head", help="Index of the head to label."),
    text: str = typer.Option(..., "--text", help="The label, one line (e.g. 'prefers short, formal answers')."),
    as_json: JsonFlag = False,
) -> None:
    """Set one head's label in the model's config.json.

    Example: micro-rm heads label runs/dsp --head 2 --text "literature: vivid, figurative"
    """
    from micro_rm.heads.labels import save_labels

    labels = save_labels(model_dir, {head: text}, only=[head])
    emit({"labels": labels}, as_json, "\n".join(f"head {k}: {label}" for k, label in enumerate(labels)))


@heads_app.command("audit")
def audit_cmd(
    model_dir: str = MODEL_ARG,
    data: str = typer.Option(..., "--data", help=DATA_HELP + " Safety pairs: chosen is the safer "
                                                 "response (HH-RLHF harmless, PKU-SafeRLHF)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the test, Bonferroni-"
                                "corrected over the heads."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the audit as JSON here."),
    hf_split: HfSplit = None,
    cache_dir: CacheDir = None,
    cache_only: CacheOnly = False,
    as_json: JsonFlag = False,
) -> None:
    """Flag heads that prefer the rejected response of safety pairs more often than chance.

    One-sided binomial test against 1/2, Bonferroni over the heads, with a Wilson interval; mask
    a flagged head with `micro-rm heads mask`.

    Example: micro-rm heads audit runs/hh --data hh-harmless.jsonl
    """
    from micro_rm.heads.audit import audit_heads, audit_summary

    if not 0 < alpha < 1:
        raise MicroRMError(f"--alpha must be in (0, 1), got {alpha}")
    check_output(out, "--out", {"MODEL": model_dir, "--data": data}, folder=False)
    model, _, features = load_features(model_dir, data, hf_split, cache_dir, cache_only)
    audit = {"model": model_dir, "data": data, **audit_heads(model, features, alpha=alpha)}
    if out is not None:
        with atomic_open(out) as fh:
            fh.write(json.dumps(audit, indent=2) + "\n")
    emit(audit, as_json, audit_summary(audit))


@heads_app.command("mask")
def mask_cmd(
    model_dir: str = MODEL_ARG,
    head: list[int] = typer.Option(..., "--head", help="Head to mask (repeat for several)."),
    out: Path = typer.Option(..., "--out", help="Folder for the masked model."),
    as_json: JsonFlag = False,
) -> None:
    """Write a copy of the model whose router never routes to the given heads.

    Their weight is 0 everywhere and the others renormalise; the service serves the same.

    Example: micro-rm heads mask runs/hh --head 1 --out runs/hh-masked
    """
    from micro_rm.heads.mask import mask_heads
    from micro_rm.model.mixture import MixtureRewardModel

    check_output(out, "--out", {"MODEL": model_dir}, folder=True, model=True)
    model = mask_heads(MixtureRewardModel.from_pretrained(model_dir), head)
    model.save_pretrained(out)
    masked = model.config.masked_heads
    emit({"out": str(out), "masked_heads": masked}, as_json,
         f"wrote {out}: heads {', '.join(map(str, masked))} masked of {model.config.num_heads}")


@heads_app.command("merge")
def merge_cmd(
    model_dir: str = MODEL_ARG,
    data: str = typer.Option(..., "--data", help=DATA_HELP + " The training pairs: the router is re-fitted on them."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    min_agreement: float = typer.Option(0.9, "--min-agreement", help="Merge heads that pick the same "
                                        "winner on at least this share of the pairs (every two of a group)."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs of re-fitting the router (heads frozen)."),
    hf_split: HfSplit = None,
    cache_dir: CacheDir = None,
    cache_only: CacheOnly = False,
    as_json: JsonFlag = False,
) -> None:
    """Merge heads whose predictions agree above a threshold; re-fit the router.

    The router is re-fitted on the train pairs with the stage-1 objective, heads frozen.

    Example: micro-rm heads merge runs/dsp --data dsp-train.jsonl --min-agreement 0.9 --out runs/dsp-merged
    """
    from micro_rm.heads.merge import merge_heads

    check_range(epochs, "--epochs", 1, MAX_EPOCHS)
    check_range(min_agreement, "--min-agreement", 0.5, 1)     # merge_heads's range, before any encoding
    check_output(out, "--out", {"MODEL": model_dir, "--data": data, "--cache": cache_dir}, folder=True, model=True)
    model, _, features = load_features(model_dir, data, hf_split, cache_dir, cache_only)
    merged, info = merge_heads(model, features, min_agreement, epochs=epochs)
    merged.save_pretrained(out)
    groups = ", ".join("{" + ", ".join(map(str, c)) + "}" for c in info["clusters"])
    emit({"out": str(out), **info}, as_json,
         f"K {info['heads_before']} → {info['heads_after']} (groups {groups})"
         + (f"; router re-fitted: validation NLL {info['validation_nll_before']:.4f} → {info['validation_nll']:.4f}"
            if "validation_nll" in info else "; nothing to merge, model copied") + f"\nmodel: {out}")
