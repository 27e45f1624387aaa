"""Benchmark stage-1 training on cached features; prints a markdown table.

(a) ``fit_stage1`` on 200K synthetic feature pairs at d = d_r = 384 (MiniLM's width), K = 10,
    router 128: pairs per second per epoch and the process's peak memory, at the paper's
    effective batch of 32 and at larger batches; in RAM (float32) and memory-mapped (float16).
(b) the naive way of the released code: the frozen backbone (``default``, all-MiniLM-L6-v2, 256
    tokens) runs inside every training step on 32 pairs = 96 texts (prompt+chosen,
    prompt+rejected, route), then one head/router update. A few steps are timed and
    extrapolated to pairs per second; the ratio (a) / (b) is what caching features buys.
    (b) uses DSP texts when ../shared/data is present, otherwise synthetic ~170-word pairs.

Usage::

    python benchmarks/train.py                 # print the table
    python benchmarks/train.py --write         # and put it into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import data_dir, machine, markdown_table, publish

SECTION = "## Stage-1 training (`benchmarks/train.py`)"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200_000, help="Synthetic feature pairs.")
    parser.add_argument("--dim", type=int, default=384, help="Feature width d (= d_r).")
    parser.add_argument("--heads", type=int, default=10, help="K.")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs per timing (the fastest is reported).")
    parser.add_argument("--batch-sizes", default="32,256", help="Comma-separated effective batch sizes.")
    parser.add_argument("--naive-steps", type=int, default=3, help="Timed steps of the naive loop "
                        "(each encodes 96 texts with MiniLM; about 5-10 s per step on 2 cores).")
    parser.add_argument("--write", action="store_true", help="Put the table into BENCHMARKS.md.")
    return parser


def synthetic_features(n: int, d: int, dtype=np.float32):
    from micro_rm.features.base import PairFeatures

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, d), dtype=np.float32).astype(dtype, copy=False) for _ in range(3)]
    return PairFeatures(chosen=arrays[0], rejected=arrays[1], route=arrays[2],
                        prompts=[f"prompt {i // 4}" for i in range(n)])


def memory_mapped(features, folder: Path):
    """The same features as float16 ``.npy`` files opened with ``mmap_mode="r"``."""
    from micro_rm.features.base import PairFeatures

    arrays = {}
    for name in ("chosen", "rejected", "route"):
        np.save(folder / f"{name}.npy", getattr(features, name).astype(np.float16))
        arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
    return PairFeatures(prompts=features.prompts, **arrays)


def epoch_rate(features, heads: int, batch: int, epochs: int) -> float:
    """Pairs per second of the fastest epoch (validation off: it is timed apart from training)."""
    from micro_rm.train import Stage1Config, fit_stage1

    config = Stage1Config(heads=heads, batch_size=batch, epochs=epochs, val_fraction=0.0)
    _, history = fit_stage1(features, config, progress=False)
    seconds = np.diff([0.0] + [row["seconds"] for row in history["epochs"]])
    return len(features) / float(seconds.min())


def naive_texts(n_pairs: int) -> list[dict]:
    folder = data_dir() / "dsp-domain-specific-preference"
    if folder.is_dir():
        from micro_rm.data.builders import build_pairs
        return build_pairs("dsp", folder)[:n_pairs]
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(3000)]
    text = lambda k: " ".join(rng.choice(words, k))  # noqa: E731
    return [{"prompt": text(40), "chosen": text(130), "rejected": text(130), "context": text(10)}
            for _ in range(n_pairs)]


def naive_rate(heads: int, steps: int) -> float:
    """Pairs per second when the backbone runs inside every step (the released code's way)."""
    import torch

    from micro_rm.features.backbones import load_backbone
    from micro_rm.model import MixtureConfig, MixtureRewardModel
    from micro_rm.train import stage1_loss

    backbone = load_backbone("default")
    model = MixtureRewardModel(MixtureConfig(num_heads=heads, reward_dim=backbone.dim, route_dim=backbone.dim))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    records = naive_texts(32 * (steps + 1))
    times = []
    for step in range(steps + 1):                      # step 0 warms up
        batch = records[32 * step: 32 * (step + 1)]
        start = time.perf_counter()
        items = ([backbone.reward_item(r["prompt"], r["chosen"]) for r in batch]
                 + [backbone.reward_item(r["prompt"], r["rejected"]) for r in batch]
                 + [backbone.route_item(r["prompt"], r.get("context")) for r in batch])
        vectors = torch.from_numpy(backbone.encode(items))
        chosen, rejected, route = vectors.split(len(batch))
        loss = stage1_loss(model, chosen - rejected, route, alpha=0.5, balance="example")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 32 / float(np.median(times[1:]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    features = synthetic_features(args.pairs, args.dim)
    base_mb = peak_rss_mb()
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rate = epoch_rate(features, args.heads, batch, args.epochs)
        rows.append((f"in RAM, float32, batch {batch}", rate, peak_rss_mb()))
    with tempfile.TemporaryDirectory() as tmp:
        mapped = memory_mapped(features, Path(tmp))
        del features
        batch = int(args.batch_sizes.split(",")[0])
        rows.append((f"memory-mapped float16, batch {batch}", epoch_rate(mapped, args.heads, batch, args.epochs),
                     peak_rss_mb()))
        del mapped
    naive = naive_rate(args.heads, args.naive_steps)
    feature_mb = 3 * args.pairs * args.dim * 4 / 2 ** 20
    lines = [
        SECTION, "",
        f"{args.pairs:,} synthetic feature pairs, d = d_r = {args.dim}, K = {args.heads}, MLP router 128, "
        f"AdamW; {os.cpu_count()} CPU cores ({machine()}), "
        f"torch {__import__('torch').__version__}. Pairs/s is the fastest of {args.epochs} epochs; "
        f"peak RSS is the whole process so far (the float32 features alone are {feature_mb:.0f} MiB; "
        f"{base_mb:.0f} MiB before training).", "",
        *markdown_table(
            ["run", "pairs/s per epoch", "peak RSS (MiB)", "vs naive"],
            [*((f"stage 1 on cached features, {name}", f"{rate:,.0f}", f"{mb:,.0f}", f"{rate / naive:,.0f}×")
               for name, rate, mb in rows),
             (f"naive: MiniLM forward inside every step (batch 32 = 96 texts, {args.naive_steps} steps, "
              "extrapolated)", f"{naive:,.1f}", f"{peak_rss_mb():,.0f}", "1×")],
            align="lrrr"),
        "",
    ]
    table = "\n".join(lines)
    publish(SECTION, table, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
