"""``micro-rm suggest``: which candidate pairs should a user label next (the service's
``POST /users/{id}/queries`` for a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import app, check_output, emit
from micro_rm.cli.options import CacheDir, Device, Eta, HfSplit, JsonFlag, ModelDir
from micro_rm.online.hedge import DEFAULT_ETA


@app.command("suggest")
def suggest(
    model_dir: ModelDir = ...,
    user: str = typer.Option(..., "--user", help="User id: their feedback so far sharpens the router's weights."),
    data: str = typer.Option(..., "--data", help="Candidate pairs (jsonl, json, parquet, csv, dataset "
                                                 "folder or hub id) with `prompt`, `chosen`, `rejected` "
                                                 "and an optional `context`; which response is `chosen` "
                                                 "means nothing here."),
    k: int = typer.Option(1, "--k", help="How many pairs to suggest (the whole pool if it has fewer)."),
    state: Optional[str] = typer.Option(None, "--state", help="Per-user state (a SQLite file or a "
                                        "postgresql:// URL), read only: a missing file or an unknown "
                                        "user starts from the router's weights, and nothing is created."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON-lines file to write: the k pairs, best "
                                       "first, each with its `index` in --data and its `gain`."),
    eta: Eta = DEFAULT_ETA,
    hf_split: HfSplit = None,
    cache_dir: CacheDir = None,
    device: Device = "cpu",
    as_json: JsonFlag = False,
) -> None:
    """The k candidate pairs whose labels would teach most about a user, best first.

    Each pair's gain is the expected drop (nats) of the entropy of the user's weights over the
    heads once they label it. The labelling loop: suggest, have the user label the pairs, add
    them with `micro-rm feedback`, suggest again.

    Example: micro-rm suggest --model runs/dsp --state state.db --user ana --data candidates.jsonl
    --k 5 --out ask-ana.jsonl
    """
    from micro_rm.data.readers import read_pairs, write_pairs
    from micro_rm.data.records import check_user_id
    from micro_rm.scoring.engine import RewardEngine
    from micro_rm.scoring.suggest import suggest as rank

    check_user_id(user, "--user")
    check_output(out, "--out", {"--data": data, "--state": state, "--model": model_dir}, folder=False)
    records = read_pairs(data, hf_split=hf_split)
    engine = RewardEngine(model_dir, eta=eta, cache_dir=cache_dir, device=device)
    found = rank(engine, records, k, user=user, state=state)
    rows = [{"index": q.index, "gain": q.gain, **records[q.index]} for q in found]
    if out is not None:
        write_pairs(rows, out)
    summary = "\n".join(f"  #{row['index']}: gain {row['gain']:.4f}" for row in rows)
    emit({"user": user, "state": state, "pool": len(records), "k": len(rows), "queries": rows,
          **({"out": str(out)} if out is not None else {})}, as_json,
         f"the {len(rows)} of {len(records)} pair(s) to ask {user!r} first:\n{summary}"
         + (f"\nwritten to {out}" if out is not None else ""))
