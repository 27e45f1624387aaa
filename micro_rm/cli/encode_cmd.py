"""``micro-rm encode``: fill the feature cache for a pair file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import app, emit


@app.command("encode")
def encode(
    data: str = typer.Option(..., "--data", help="Pair file (jsonl, json, parquet, csv), dataset "
                                                 "folder or Hugging Face hub id."),
    backbone_name: str = typer.Option(..., "--backbone", help="Backbone: default, static, a "
                                      "Hugging Face model id or a local folder."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder "
                                             "(default: $MICRO_RM_CACHE or the user cache dir)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate each item to "
                                             "this many tokens (default: the backbone's limit)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per backbone call."),
    dtype: str = typer.Option("float32", "--dtype", help="Backbone compute dtype: "
                                 "float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    router_input: str = typer.Option("context", "--router-input", help="What the router reads: "
                                     "context (context + prompt) or prompt."),
    context_in_reward: bool = typer.Option(False, "--context-in-reward", help="Prepend the context "
                                           "to the prompt of the reward features too."),
    storage: str = typer.Option("float16", "--storage", help="Cache precision: float16 (half the "
                                "disk) or float32 (exact)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Log and skip bad records "
                                      "instead of failing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Encode every unique text of a pair file once into the feature cache.

    Later commands (train, adapt, eval) read the cache and take seconds.
    A second encode of the same file encodes nothing; an interrupted run keeps what it finished.

    Example: micro-rm encode --data dsp.jsonl --backbone default --batch-size 32
    """
    from micro_rm.errors import MicroRMError
    from micro_rm.features.featurize import ROUTER_INPUTS

    # Cheap checks first, so a typo fails before the backbone loads.
    if max_length is not None and max_length <= 0:
        raise MicroRMError(f"--max-length must be a positive number of tokens, got {max_length}")
    if batch_size < 1:
        raise MicroRMError(f"--batch-size must be at least 1, got {batch_size}")
    if router_input not in ROUTER_INPUTS:
        raise MicroRMError(f"--router-input must be one of {', '.join(ROUTER_INPUTS)}, "
                           f"got {router_input!r}")

    from micro_rm.data.readers import read_pairs
    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize

    start = time.perf_counter()
    cache = FeatureCache(cache_dir, dtype=storage)
    records = read_pairs(data, skip_invalid=skip_invalid)
    backbone = load_backbone(backbone_name, max_length=max_length, dtype=dtype, device=device,
                             batch_size=batch_size)
    _, stats = featurize(records, backbone, cache, router_input=router_input,
                         context_in_reward=context_in_reward, batch_size=batch_size)
    folder = cache.folder(backbone.fingerprint())
    result = {**stats.as_dict(), "pairs": len(records), "backbone": backbone.name,
              "dim": backbone.dim, "router_input": router_input,
              "context_in_reward": context_in_reward, "storage": storage,
              "cache": str(folder), "total_seconds": round(time.perf_counter() - start, 3)}
    rate = stats.encoded / stats.seconds if stats.seconds > 0 and stats.encoded else 0.0
    emit(result, as_json,
         f"{len(records)} pairs, {stats.texts} unique texts: {stats.encoded} encoded"
         f"{f' ({rate:.1f} texts/s)' if rate else ''}, {stats.from_cache} from cache, "
         f"in {stats.seconds:.1f} s\ncache: {folder}")
