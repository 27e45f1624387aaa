"""``micro-rm encode``: fill the feature cache for a pair file, in one process or many (under
``torchrun``, each rank encodes its share and rank 0 alone prints; docs/scale-out.md)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from micro_rm.cli.app import app, check_output, check_range, config_option, emit
from micro_rm.cli.options import DATA_HELP, BackboneName, CacheDir, Device, Dtype, HfSplit, JsonFlag, MaxLength

feature_option = config_option("micro_rm.features.base:FeatureSettings")  # of `encode` and `train`
MAX_BATCH = 65_536   # texts per backbone call (--batch-size)
MAX_TOKENS = 1_000_000  # --max-length: far above any backbone's limit, yet a typo like 1e12 is refused


@app.command("encode")
def encode(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    hf_split: HfSplit = None,
    backbone_name: BackboneName = ...,
    cache_dir: CacheDir = None,
    max_length: MaxLength = None,
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per backbone call."),
    tokens_per_batch: Optional[int] = typer.Option(None, "--tokens-per-batch", help="Instead of "
                                                   "--batch-size, fill each backbone call up to this "
                                                   "many padded tokens (GPU runs, e.g. 16384)."),
    dtype: Dtype = "float32",
    device: Device = "cpu",
    router_input: str = feature_option("router_input"),
    context_in_reward: bool = feature_option("context_in_reward"),
    context_encoding: str = feature_option("context_encoding"),
    storage: str = typer.Option("float16", "--storage", help="Cache precision: float16 (half the "
                                "disk) or float32 (exact)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Log and skip bad records instead of failing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the pair features to this "
                                       "folder as float16 .npy files that load memory-mapped "
                                       "(micro_rm.features.store.load_features)."),
    as_json: JsonFlag = False,
) -> None:
    """Encode every unique text of a pair file once into the feature cache.

    Later commands (train, adapt, eval) read the cache and take seconds.
    A second encode of the same file encodes nothing; an interrupted run keeps what it finished.

    Example: micro-rm encode --data dsp.jsonl --backbone default --batch-size 32

    Several processes (--device cuda means cuda:LOCAL_RANK): torchrun --nproc_per_node=4 -m
    micro_rm.cli encode --data dsp.jsonl --backbone default --device cuda --tokens-per-batch 16384
    """
    from micro_rm.features.base import FeatureSettings
    from micro_rm.features.batching import check_batching
    from micro_rm.features.store import check_destination

    # Cheap checks first, so a typo fails before the backbone loads.
    check_range(max_length, "--max-length", 1, MAX_TOKENS)
    check_batching(batch_size, tokens_per_batch)
    check_range(batch_size, "--batch-size", 1, MAX_BATCH)
    check_range(tokens_per_batch, "--tokens-per-batch", 1, MAX_BATCH * MAX_TOKENS)
    settings = FeatureSettings.from_options(router_input, context_in_reward, context_encoding)
    check_output(out, "--out", {"--data": data, "--cache": cache_dir}, folder=True, replaces_folder=True)
    if out is not None:
        check_destination(out)   # the rule FeatureWriter applies when it replaces the folder

    from micro_rm.data.readers import read_pairs
    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.distributed import init_group
    from micro_rm.features.featurize import featurize, record_items

    start = time.perf_counter()
    cache = FeatureCache(cache_dir, dtype=storage)
    records = read_pairs(data, skip_invalid=skip_invalid, hf_split=hf_split)
    dtype = resolve_dtype(dtype, backbone_name, device)
    group = init_group(device)
    is_main = group is None or group.is_main
    try:
        # With --tokens-per-batch the cache plans the batches; the backbone must not split them.
        backbone = load_backbone(backbone_name, max_length=max_length, dtype=dtype,
                                 device=group.device(device) if group else device,
                                 batch_size=tokens_per_batch or batch_size)
        stats = cache.fill(record_items(records, backbone, **asdict(settings)), backbone, batch_size=batch_size,
                           tokens_per_batch=tokens_per_batch, progress=is_main, group=group)
        if out is not None and is_main:  # every rank's shards are in: fill() waited for them
            featurize(records, backbone, cache, **asdict(settings), allow_encode=False, out=out)
        if group is not None:
            group.barrier()  # no rank leaves (and tears the group down) while rank 0 writes
    finally:
        if group is not None:
            group.close()
    if not is_main:
        return
    folder = cache.folder(backbone.fingerprint())
    result = {**asdict(stats), "pairs": len(records), "backbone": backbone.name,
              "dim": backbone.dim, "dtype": dtype, **asdict(settings), "storage": storage,
              "cache": str(folder), "features": str(out) if out else None,
              "total_seconds": round(time.perf_counter() - start, 3)}
    rate = stats.encoded / stats.seconds if stats.seconds > 0 and stats.encoded else 0.0
    ranks = f" by {stats.ranks} processes" if stats.ranks > 1 else ""
    emit(result, as_json,
         f"{len(records)} pairs, {stats.texts} unique texts: {stats.encoded} encoded{ranks}"
         f"{f' ({rate:.1f} texts/s)' if rate else ''}, {stats.from_cache} from cache, "
         f"in {stats.seconds:.1f} s\ncache: {folder}" + (f"\nfeatures: {out}" if out else ""))


def resolve_dtype(dtype: str, backbone_name: str, device: str) -> str:
    """``--dtype auto``: bfloat16 (half the memory) for a decoder (last-token pooling) on CUDA, else
    float32. Other values pass through (load_backbone checks them)."""
    if dtype != "auto":
        return dtype
    from micro_rm.features.backbones import BUILTIN_BACKBONES

    if not device.startswith("cuda") or backbone_name in BUILTIN_BACKBONES:
        return "float32"
    from transformers import AutoConfig

    from micro_rm.features.backbones.transformer import detect_pooling

    try:
        config = AutoConfig.from_pretrained(backbone_name)
    except (OSError, ValueError):
        return "float32"  # load_backbone reports the unloadable name with its own message
    return "bfloat16" if detect_pooling(config) == "last" else "float32"
