"""``micro-rm score``: offline batch scoring of a file of prompts and responses."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import app, check_output, emit, open_state
from micro_rm.cli.options import CacheDir, Device, HfSplit, JsonFlag, ModelDir


@app.command("score")
def score(
    model: ModelDir = ...,
    data: str = typer.Option(..., "--data", help="Records with `prompt` and `responses` (a list), "
                                                 "`response`/`completion`, or `chosen` and `rejected`: "
                                                 "jsonl, json, parquet, csv, dataset folder or hub id."),
    out: Path = typer.Option(..., "--out", help="JSON-lines file to write: one line per record with "
                                                "rewards, head_rewards, weights and router_weights."),
    context: Optional[str] = typer.Option(None, "--context", help="Context for records without a "
                                          "`context` field (what the router reads with the prompt)."),
    user: Optional[str] = typer.Option(None, "--user", help="Score with this user's online weights "
                                       "(records' `user_id` fields win); needs --state."),
    state: Optional[str] = typer.Option(None, "--state", help="Per-user state (sqlite:///state.db or "
                                        "a postgresql:// URL), as written by `micro-rm serve` or "
                                        "`micro-rm feedback`; its weights are read, never changed."),
    hf_split: HfSplit = None,
    cache_dir: CacheDir = None,
    device: Device = "cpu",
    as_json: JsonFlag = False,
) -> None:
    """The routed reward of every response in a file, with each head's reward and the weights
    used (the user's, with --user), one JSON line per input record.

    Example: micro-rm score --model runs/dsp --data candidates.jsonl --out scores.jsonl --context "I am a child."
    """
    from micro_rm.scoring.records import score_file

    check_output(out, "--out", {"--data": data, "--state": state, "--model": model}, folder=False)
    if state is None:
        result = score_file(model, data, out, context=context, user_id=user, hf_split=hf_split,
                            cache_dir=cache_dir, device=device)
    else:
        from micro_rm.model.mixture import MixtureRewardModel

        heads = MixtureRewardModel.from_pretrained(model, device=device)
        # The store is opened (and closed) here, so no connection outlives the command.
        with open_state(state, heads, reader="score") as store:
            if user is not None:  # a damaged state is refused now, not after the backbone loaded
                store.get(user, True)
            result = score_file(heads, data, out, context=context, user_id=user, state=store, hf_split=hf_split,
                                cache_dir=cache_dir, device=device)
    emit(result, as_json, f"scored {result['responses']} responses of {result['records']} records "
                          f"({result['encoded_texts']} texts encoded)\nscores: {out}")
