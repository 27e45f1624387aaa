"""Onboarding a new user on DSP: the suggest → label → feedback loop, run through the CLI.

One model is trained on the DSP train split (``micro-rm train --backbone default --heads 4
--epochs 30``, the settings of ``configs/dsp.yaml`` on the README's quick-start pairs; skipped with ``--model``).
Each of the four domains is a new user known only by id: their pairs carry no context, so the
router sees the prompt alone. Per seed, each user gets a candidate pool of ``--pool`` pairs drawn
from their domain's train pairs, and labels pairs from it (the label is the pair record's: under
domain D the D-response wins):

- ``active``: ``micro-rm suggest --k 1`` on the pairs not asked yet, then ``micro-rm feedback``
  with that pair, and again;
- ``random``: the pool's pairs in a random order, through ``micro-rm feedback``.

After 0, 1, 2 and 5 labels, ``micro-rm eval --state --user`` gives the user's accuracy on their
domain's test pairs (0 labels: the router alone). The table shows the mean over users, its mean
± 95% t-interval over seeds, the paired difference active − random, and the oracle: each
domain's best single head on its test pairs (``micro-rm eval``'s "best head per attribute").
Every command runs through ``micro_rm.cli.main(argv)``, the ``micro-rm`` entry point, in this
process (``--subprocess`` starts the real executable each time: the same numbers, slower).

Last, the latency of ``POST /users/{id}/queries`` for a pool of 256 pairs whose features are
cached (in-process ASGI client: the routing, checks, ranking and JSON, no network).

Usage::

    MICRO_RM_CACHE=/tmp/h7_cache python benchmarks/onboarding.py --work /tmp/onboarding
    python benchmarks/onboarding.py --work /tmp/onboarding --model /tmp/onboarding/model --write
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from _common import data_dir, machine, markdown_table, publish

SECTION = "## Onboarding a new user (`benchmarks/onboarding.py`)"
LABELS = (0, 1, 2, 5)
ADMIN = "benchmark-admin-token-0123456789"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the pair files, model and state.")
    parser.add_argument("--model", type=Path, default=None, help="A model trained on the DSP train split "
                        "(default: train one into WORK/model).")
    parser.add_argument("--epochs", type=int, default=30, help="Stage-1 epochs of the model trained here.")
    parser.add_argument("--seeds", type=int, default=10, help="Draws of the pools and the random orders.")
    parser.add_argument("--pool", type=int, default=256, help="Candidate pairs per user and seed.")
    parser.add_argument("--latency-repeats", type=int, default=20, help="Timed /queries requests.")
    parser.add_argument("--subprocess", action="store_true", help="Run each command as a `micro-rm` process.")
    parser.add_argument("--write", action="store_true", help="Put the table into BENCHMARKS.md.")
    return parser


def cli(argv: Sequence[str], use_subprocess: bool = False) -> dict[str, Any]:
    """Run one ``micro-rm`` command with ``--json``; its JSON result (exit code 0 required)."""
    argv = [str(a) for a in argv] + ["--json"]
    if use_subprocess:
        done = subprocess.run([str(Path(sys.executable).parent / "micro-rm"), *argv], capture_output=True,
                              text=True)
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        from micro_rm.cli import main

        out_buf, err_buf = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
            code = main(argv)
        out, err = out_buf.getvalue(), err_buf.getvalue()
    if code != 0:
        raise SystemExit(f"micro-rm {' '.join(argv)} failed ({code}):\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def prepare(work: Path, model: Path | None, epochs: int, run) -> tuple[Path, dict[str, list], dict[str, Path]]:
    """The model, each domain's train pairs (without context) and test file (without context)."""
    work.mkdir(parents=True, exist_ok=True)
    source = data_dir() / "dsp-domain-specific-preference"
    for split in ("train", "test"):
        if not (work / f"{split}.jsonl").exists():
            run(["data", "build", "dsp", "--source", source, "--out", work / f"{split}.jsonl", "--split", split])
    if model is None:
        model = work / "model"
        if not (model / "config.json").exists():
            run(["train", "--data", work / "train.jsonl", "--backbone", "default", "--heads", 4,
                 "--epochs", epochs, "--out", model])
    read = lambda split: [json.loads(line) for line in (work / f"{split}.jsonl").read_text().splitlines()]  # noqa: E731
    pools, tests = {}, {}
    for split in ("train", "test"):
        for record in read(split):
            record.pop("context", None)                 # a user known only by id
            (pools if split == "train" else tests).setdefault(record["attribute"], []).append(record)
    test_files = {d: write_jsonl(work / f"test-{d}.jsonl", rows) for d, rows in tests.items()}
    return model, pools, test_files


def harness_picks(model: Path, pool: list[dict], n: int) -> list[int]:
    """The pairs the harness's new-user curve would ask from ``pool`` (its
    :func:`~micro_rm.experiment.users.feedback_order`, on the same cached features)."""
    from micro_rm.experiment.users import feedback_order
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.text import featurize_for
    from micro_rm.online import DEFAULT_ETA

    rm = MixtureRewardModel.from_pretrained(str(model))
    f = featurize_for(rm, pool, progress=False)
    probs = rm.head_probs(f.chosen, f.rejected).astype(np.float64)
    prior = np.log(np.clip(rm.router_weights(f.route), 1e-30, 1.0)).astype(np.float64)
    return feedback_order(probs, prior, n, DEFAULT_ETA, np.random.default_rng(0), True)


def curve(model: Path, pool: list[dict], test_file: Path, state: Path, user: str, active: bool,
          order: np.ndarray, work: Path, run) -> tuple[list[float], list[int]]:
    """The user's test accuracy after each count in ``LABELS`` (0 is filled in by the caller),
    and the pairs asked."""
    scores, asked, left = [], [], list(range(len(pool)))
    for n in range(1, max(LABELS) + 1):
        if active:
            pool_file = write_jsonl(work / "pool.jsonl", [pool[i] for i in left])
            found = run(["suggest", "--model", model, "--state", state, "--user", user, "--data", pool_file,
                         "--k", 1])
            pick = left[found["queries"][0]["index"]]
        else:
            pick = int(order[n - 1])
        asked.append(pick)
        left.remove(pick)
        run(["feedback", "--model", model, "--state", state, "--user", user,
             "--data", write_jsonl(work / "label.jsonl", [pool[pick]])])
        if n in LABELS:
            scores.append(run(["eval", "--model", model, "--data", test_file, "--state", state,
                               "--user", user])["mean_accuracy"])
    return scores, asked


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over the rows of ``values`` [S, ...]."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return values.mean(axis=0), np.zeros(values.shape[1:])
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(axis=0, ddof=1) / np.sqrt(len(values))
    return values.mean(axis=0), half


def queries_latency(model: Path, pool: list[dict], repeats: int) -> tuple[float, float, float]:
    """``(first, median, p95)`` seconds of ``POST /users/{id}/queries`` with ``len(pool)`` pairs
    whose features are in the disk cache (the first request reads them into memory)."""
    import tempfile

    from fastapi.testclient import TestClient

    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.app import create_app
    from micro_rm.serve.settings import ServeSettings

    with tempfile.TemporaryDirectory() as tmp:
        settings = ServeSettings(model=str(model), state=f"sqlite:///{tmp}/state.db", admin_token=ADMIN)
        body = {"pairs": [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pool], "k": 5}
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with TestClient(create_app(settings, scorer=RewardScorer.load(str(model)))) as client:
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                answer = client.post("/users/newcomer/queries", json=body, headers=headers)
                times.append(time.perf_counter() - start)
                assert answer.status_code == 200, answer.text
    return times[0], statistics.median(times[1:]), float(np.percentile(times[1:], 95))


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    run = lambda a: cli(a, args.subprocess)  # noqa: E731
    start = time.perf_counter()
    model, pools, test_files = prepare(args.work, args.model, args.epochs, run)
    trained = json.loads((model / "config.json").read_text())["training"]
    domains = sorted(test_files)
    oracle_run = run(["eval", "--model", model, "--data", args.work / "test.jsonl"])
    oracle = oracle_run["heads"]["oracle_mean_accuracy"]
    router = {d: run(["eval", "--model", model, "--data", test_files[d]])["mean_accuracy"] for d in domains}
    state = args.work / "state.db"
    state.unlink(missing_ok=True)
    results = {"random": np.zeros((args.seeds, len(LABELS))), "active": np.zeros((args.seeds, len(LABELS)))}
    same = checked = 0
    for seed in range(args.seeds):
        for selection in ("random", "active"):
            per_user = []
            for d, domain in enumerate(domains):
                rng = np.random.default_rng([seed, d])
                pool_rows = rng.choice(len(pools[domain]), size=min(args.pool, len(pools[domain])), replace=False)
                pool = [pools[domain][i] for i in pool_rows]
                order = rng.permutation(len(pool))
                user = f"{domain}-{selection}-{seed}"
                scores, asked = curve(model, pool, test_files[domain], state, user, selection == "active",
                                      order, args.work, run)
                per_user.append([router[domain]] + scores)
                if selection == "active" and len(pool) <= 500:   # the harness asks from ≤ 500 candidates
                    same += asked == harness_picks(model, pool, len(asked))
                    checked += 1
            results[selection][seed] = np.mean(per_user, axis=0)
        print(f"seed {seed}: " + "; ".join(f"{s} " + " ".join(f"{v:.3f}" for v in results[s][seed])
                                            for s in results), flush=True)
    first, median, p95 = queries_latency(model, pools[domains[0]][:256], args.latency_repeats)

    (r_mean, r_half), (a_mean, a_half) = interval(results["random"]), interval(results["active"])
    d_mean, d_half = interval(results["active"] - results["random"])
    rows = [(n, f"{r_mean[j]:.3f} ± {r_half[j]:.3f}", f"{a_mean[j]:.3f} ± {a_half[j]:.3f}",
             f"{d_mean[j]:+.3f} ± {d_half[j]:.3f}", f"{a_mean[j] / oracle:.3f}") for j, n in enumerate(LABELS)]
    table = "\n".join([
        SECTION, "",
        f"DSP, one `micro-rm train --backbone default --heads {trained['heads']} --epochs "
        f"{trained['epochs']}` model on the train split; each of "
        f"the {len(domains)} domains a new user known only by id (no context); per seed a pool of "
        f"{args.pool} of the domain's train pairs (all, if fewer), labels from the pair records; every step a CLI "
        f"command (`micro-rm suggest` / `feedback` / `eval --user`). Accuracy on the domain's test "
        f"pairs, mean over users; mean ± 95% t-interval over {args.seeds} seeds. Oracle (each "
        f"domain's best head): {oracle:.3f}.", "",
        *markdown_table(["labels", "random", "active (suggest)", "active − random (paired)", "active / oracle"],
                        rows, align="rrrrr"), "",
        f"The pairs `micro-rm suggest` picked are the harness's new-user curve's "
        f"(`experiment.users.feedback_order` on the same pool) for {same} of {checked} users × seeds.", "",
        f"`POST /users/{{id}}/queries`, 256 candidate pairs with cached features, k = 5: median "
        f"{median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms ({args.latency_repeats} requests; the first, "
        f"reading the disk cache into memory: {first * 1000:.0f} ms), {machine()}, default backbone.", "",
        f"Reproduce: `python benchmarks/onboarding.py --work WORK --epochs {trained['epochs']} --seeds {args.seeds}` "
        f"({time.perf_counter() - start:.0f} s here with a warm feature cache).", ""])
    publish(SECTION, table, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
