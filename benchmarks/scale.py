"""Benchmark scale-out: stage 1 on a million memory-mapped fp16 pairs, and a two-process encode.

(a) 1M synthetic cached pairs at d = 384 in float16 (about 2.3 GB, written in chunks to a
    temporary folder), one epoch of stage-1 training in a fresh subprocess: pairs/s and the
    subprocess's peak RSS (``resource.getrusage``; goal: under 1.5 GB), so that the generator's
    memory does not count.
(b) ``micro-rm encode`` of a few hundred texts into an empty cache, one process against
    ``torchrun --nproc_per_node=2`` (CPU, gloo), for the static and the default backbone: the
    encode time (inside the command) and the wall time (with start-up), and the speed-ups.

Usage::

    python benchmarks/scale.py                 # print the table
    python benchmarks/scale.py --write         # and put it into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine, markdown_table, publish

SECTION = "## Scale-out"
GOAL_RSS_MIB = 1536


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000, help="Synthetic cached pairs.")
    parser.add_argument("--dim", type=int, default=384, help="Feature width d = d_r.")
    parser.add_argument("--heads", type=int, default=10, help="Reward heads K.")
    parser.add_argument("--batch-size", type=int, default=32, help="Stage-1 batch size.")
    parser.add_argument("--encode-pairs", type=int, default=120,
                        help="Pairs of the encode file (about 3 unique texts each).")
    parser.add_argument("--repeats", type=int, default=2, help="Encode runs per setting; "
                        "medians are reported.")
    parser.add_argument("--skip-default", action="store_true",
                        help="Skip the default-backbone encode (the slowest part).")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="Where the 2.3 GB feature folder is written (and removed).")
    parser.add_argument("--write", action="store_true", help="Put the table into BENCHMARKS.md.")
    parser.add_argument("--generate-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--train-child", type=Path, help=argparse.SUPPRESS)
    return parser


# --- (a) stage 1 on memory-mapped features ----------------------------------------------------

def write_synthetic(path: Path, pairs: int, dim: int, chunk: int = 65_536) -> float:
    """A features folder of ``pairs`` rows (4 pairs per prompt); returns its size in GB."""
    import numpy as np

    from micro_rm.features.store import FeatureWriter

    rng = np.random.default_rng(0)
    direction = rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
    with FeatureWriter(path, pairs=pairs, reward_dim=dim, route_dim=dim,
                       fingerprint={"model": "synthetic", "dim": dim}) as writer:
        for start in range(0, pairs, chunk):
            n = min(chunk, pairs - start)
            route = rng.standard_normal((n, dim), dtype=np.float32)
            rejected = rng.standard_normal((n, dim), dtype=np.float32)
            sign = np.sign(route[:, :1])                    # two user groups, opposite tastes
            writer.write(start, rejected + 0.3 * sign * direction, rejected, route)
        writer.close([f"prompt {i // 4}" for i in range(pairs)])
    return sum(f.stat().st_size for f in path.iterdir()) / 1e9


def own_peak_mib() -> float:
    """This process's peak RSS since it started (VmHWM). ``getrusage``'s ``ru_maxrss`` also
    counts the parent's peak at spawn time, which Linux carries over ``execve``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_child(path: Path, heads: int, batch_size: int) -> None:
    """Runs in the subprocess: one epoch on the memory-mapped folder; prints one JSON line."""
    import resource

    import torch

    from micro_rm.features.store import load_features
    from micro_rm.train.config import Stage1Config
    from micro_rm.train.stage1 import fit_stage1

    features = load_features(path)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    _, history = fit_stage1(features, Stage1Config(heads=heads, epochs=1, batch_size=batch_size),
                            progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "pairs": len(features), "train": history["pairs"]["train"],
                      "val_loss": history["val_loss"], "rss_loaded_mib": loaded,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "vm_hwm_mib": own_peak_mib(), "torch": torch.__version__}))


def child(*argv: str) -> dict:
    """Run this script in a fresh process; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage1_run(args: argparse.Namespace) -> dict:
    # This process stays small (it imports neither numpy nor torch before here): the training
    # child's getrusage() starts from its parent's peak, so the generator runs in a child too.
    folder = Path(tempfile.mkdtemp(prefix="micro-rm-scale-", dir=args.tmp))
    try:
        start = time.perf_counter()
        size_gb = child("--generate-child", str(folder / "features"), "--pairs", str(args.pairs),
                        "--dim", str(args.dim))["size_gb"]
        written = time.perf_counter() - start
        result = child("--train-child", str(folder / "features"), "--heads", str(args.heads),
                       "--batch-size", str(args.batch_size))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {**result, "size_gb": size_gb, "write_seconds": written}


# --- (b) two-process encode -------------------------------------------------------------------

def pair_file(path: Path, pairs: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(3000)]
    text = lambda k: " ".join(rng.choice(words, k))  # noqa: E731
    with path.open("w") as fh:
        for _ in range(pairs):
            fh.write(json.dumps({"prompt": text(20), "chosen": text(60), "rejected": text(60),
                                 "context": text(8)}) + "\n")
    return path


def encode_once(data: Path, backbone: str, processes: int, cache: Path,
                threads: int | None = None) -> tuple[float, float, int]:
    """(encode seconds inside the command, wall seconds, texts encoded) into an empty cache."""
    shutil.rmtree(cache, ignore_errors=True)
    cli = ["-m", "micro_rm.cli", "encode", "--data", str(data), "--backbone", backbone,
           "--cache", str(cache), "--json"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                 "--standalone"] if processes > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run([*launcher, *cli], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], wall, result["encoded"]


def encode_runs(args: argparse.Namespace) -> list[tuple[str, dict]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = pair_file(Path(tmp) / "pairs.jsonl", args.encode_pairs)
        for backbone in ("static",) + (() if args.skip_default else ("default",)):
            encode_once(data, backbone, 1, Path(tmp) / "warm")   # builds / pages in the weights
            timing = {}
            for name, processes, threads in (("1", 1, None), ("1t", 1, 1), ("2", 2, None)):
                runs = [encode_once(data, backbone, processes, Path(tmp) / "cache", threads)
                        for _ in range(args.repeats)]
                timing[name] = (statistics.median(r[0] for r in runs),
                                statistics.median(r[1] for r in runs), runs[0][2])
            rows.append((backbone, timing))
    return rows


# --- the table --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.generate_child:
        print(json.dumps({"size_gb": write_synthetic(args.generate_child, args.pairs, args.dim)}))
        return 0
    if args.train_child:
        train_child(args.train_child, args.heads, args.batch_size)
        return 0
    load = os.getloadavg()[0]     # the machine may be shared: say how busy it was
    fit = stage1_run(args)
    encodes = encode_runs(args)
    rate = fit["pairs"] / fit["seconds"]
    lines = [
        SECTION, "",
        f"`benchmarks/scale.py`: {machine()}, {os.cpu_count()} CPU cores, torch "
        f"{fit['torch']}, {time.strftime('%Y-%m-%d')}. (a) {fit['pairs']:,} synthetic cached "
        f"pairs, d = d_r = {args.dim}, float16 `.npy` files memory-mapped "
        f"(`micro_rm.features.store`), K = {args.heads}, MLP router, batch {args.batch_size}, one "
        f"epoch (90% train, 10% validation) in a fresh subprocess; peak RSS by "
        f"`getrusage(RUSAGE_SELF)` in that subprocess (its own `VmHWM` agrees within a few MiB), "
        f"the features written by another subprocess. (b) `micro-rm encode` of "
        f"{args.encode_pairs} synthetic pairs into an empty cache, medians of {args.repeats} "
        f"runs; one process uses torch's default 2 threads, torchrun gives each rank 1 thread. "
        f"Encode time is the `seconds` the command reports; wall time includes start-up "
        f"(Python, torch, the process group). Load average when the run started: {load:.1f} "
        f"(other work on the machine slows every row, the 2-thread one most).", "",
    ]
    rows = [
        ("(a) features on disk", f"{fit['size_gb']:.2f} GB (written in {fit['write_seconds']:.0f} s)", ""),
        (f"(a) stage 1, one epoch over {fit['pairs']:,} memory-mapped pairs",
         f"{fit['seconds']:.1f} s ({rate:,.0f} pairs/s, validation included)", ""),
        (f"(a) peak RSS of the training process (after loading: {fit['rss_loaded_mib']:,.0f} MiB)",
         f"{fit['peak_rss_mib']:,.0f} MiB (VmHWM {fit['vm_hwm_mib']:,.0f} MiB)", f"< {GOAL_RSS_MIB:,} MiB"),
    ]
    for backbone, timing in encodes:
        (e1, w1, n), (t1, u1, _), (e2, w2, _) = timing["1"], timing["1t"], timing["2"]
        rows += [
            (f"(b) `{backbone}` backbone, {n} unique texts: 1 process",
             f"encode {e1:.2f} s ({n / e1:,.0f} texts/s), wall {w1:.1f} s", ""),
            (f"(b) `{backbone}` backbone: 1 process, 1 thread",
             f"encode {t1:.2f} s ({n / t1:,.0f} texts/s), wall {u1:.1f} s", ""),
            (f"(b) `{backbone}` backbone: torchrun, 2 processes",
             f"encode {e2:.2f} s ({n / e2:,.0f} texts/s), wall {w2:.1f} s", ""),
            (f"(b) `{backbone}` backbone: speed-up of 2 processes over 1",
             f"encode {e1 / e2:.2f}×, wall {w1 / w2:.2f}× (over 1 process with 1 thread: "
             f"encode {t1 / e2:.2f}×)", ""),
        ]
    lines += [*markdown_table(["measurement", "result", "goal"], rows), ""]
    table = "\n".join(lines)
    publish(SECTION, table, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
