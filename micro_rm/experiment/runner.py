"""The paper's protocol in one call: ``run_experiment(config)`` → a report folder.

Steps (METHOD.md, "Evaluation protocol"):

1. data: build the pairs (a named builder or any pair file), fill missing contexts from the
   config, take the canonical split by prompt (stage 1 trains on ``data``'s train split; the
   stage-2 budget and the oracle come from ``eval_data``'s train split, and every method is
   evaluated on ``eval_data``'s test split; both default to ``data``).
2. encode every text once through the feature cache.
3. stage 1: each MiCRo variant of the protocol × regulariser grid; ``micro`` is the variant
   picked by the config's rule (the first listed variant within one standard error of the lowest
   stage-1 validation NLL on held-out *train* prompts, or
   the first listed): no test label is read to choose it.
4. stage 2: the chosen variant's router adapted with B context pairs per attribute over
   ``budget_curve.seeds`` draws (the other variants over one draw, for the grid's table).
5. baselines (same K): single reward, static mixture, shared-base, and ``single-ctx`` /
   ``static-ctx`` that see the context in their reward features (the information MiCRo's
   router gets); HyRe (shared-base heads) and MiCRo-HyRe (the chosen variant's stage-1 heads),
   m labelled test pairs per attribute drawn by prompt.
6. oracle: one BT head per attribute trained on all of that attribute's train pairs.
7. the budget curve over B × seeds, optional per-user online Hedge, 95% bootstrap intervals by
   test prompt for every row and the paired differences of ``DIFFERENCES``, and the report folder
   (``results.json``, ``report.md``, PNGs) via :func:`micro_rm.eval.report.write_report`.

>>> folder = run_experiment(ExperimentConfig.from_yaml("configs/demo.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.experiment.config import DataConfig, ExperimentConfig, resolve_source

PRIMARY_METHODS = ("single", "static", "shared-base", "single-ctx", "static-ctx", "hyre", "micro-hyre",
                   "micro-stage1", "micro", "oracle")
# Paired differences reported with intervals: (method, against); MiCRo against the baseline given
# the same information, and what stage 2 adds to stage 1.
DIFFERENCES = (("micro-stage1", "single-ctx"), ("micro", "single-ctx"), ("micro", "micro-stage1"))
# Where the wall time goes; the rest (HyRe, evaluation, intervals, report) is "other".
TIMED_STEPS = ("encode", "stage 1", "stage 2", "curves")


def run_experiment(config: ExperimentConfig, *, backbone: Any = None, out: str | os.PathLike | None = None,
                   cache: str | os.PathLike | None = None, progress: bool = True,
                   command: Optional[str] = None) -> Path:
    """Run the whole protocol of ``config`` and write its report folder; return the folder.

    ``backbone`` overrides ``config.backbone.name`` (a name, or a loaded backbone); ``out`` is
    the report folder (default ``runs/<config file stem>``); ``cache`` the feature-cache folder
    (default ``$MICRO_RM_CACHE`` or the user cache dir).
    """
    return _Run(config, backbone, out, cache, progress, command).run()


def load_records(data: DataConfig, config_path: Optional[str]) -> list[dict[str, Any]]:
    """The pairs of one data section: built, then contexts filled from ``data.contexts``."""
    from micro_rm.data.builders import build_pairs

    source = resolve_source(data.source, config_path) if data.source else data.source
    records = build_pairs(data.builder, source, skip_invalid=data.skip_invalid)
    if data.contexts:
        unknown = sorted(set(data.contexts) - {r.get("attribute") for r in records})
        if unknown:
            raise MicroRMError(f"data.contexts names attribute(s) {', '.join(unknown)} that no pair "
                               f"of {data.builder} has")
        for record in records:
            if not record.get("context") and record.get("attribute") in data.contexts:
                context = data.contexts[record["attribute"]]
                record["context"] = context[0] if isinstance(context, list) else context
    return records


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_description() -> str:
    """CPU model, cores, memory and torch build of this machine, for the report header."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2 ** 30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()}, torch {torch.__version__}"


class _Run:
    """One experiment's state; ``run`` is the protocol, each step a small method."""

    def __init__(self, config: ExperimentConfig, backbone: Any, out: Any, cache: Any, progress: bool,
                 command: Optional[str]):
        self.config, self.progress = config, progress
        stem = Path(config.path).stem if config.path else "experiment"
        self.out = Path(out) if out is not None else Path("runs") / stem
        self.cache_dir, self.backbone_arg = cache, backbone
        self.command = command or f"run_experiment({config.path or 'config'})"
        self.notes: list[str] = []
        self.start = time.perf_counter()
        self.device = resolve_device(config.backbone.device)
        self.timing: dict[str, float] = dict.fromkeys(TIMED_STEPS, 0.0)

    # ---------------------------------------------------------------- helpers

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the wall time of the block to ``self.timing[step]`` (one of ``TIMED_STEPS``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[step] += time.perf_counter() - start

    def stage1_config(self, variant: str, **overrides: Any):
        from micro_rm.train.config import Stage1Config

        s1 = self.config.stage1
        settings = dict(heads=1 if variant == "single" else s1.heads, variant=variant, router=s1.router,
                        alpha=s1.alpha, epochs=s1.epochs, lr=s1.lr, batch_size=s1.batch_size,
                        val_fraction=s1.val_fraction, seed=self.config.seed, device=self.device)
        settings.update(overrides)
        return Stage1Config(**settings)

    def adapt_config(self, budget: int, seed: int):
        from micro_rm.train.stage2 import AdaptConfig

        s2 = self.config.stage2
        extra = {k: v for k, v in (("lr", s2.lr), ("tau_grid", tuple(s2.tau_grid) if s2.tau_grid else None))
                 if v is not None}
        return AdaptConfig(budget=budget, algorithm=s2.algorithm, tau=s2.tau, epochs=s2.epochs,
                           batch_size=s2.batch_size,
                           seed=seed, folds=s2.folds, heldout=s2.heldout, update=s2.update,
                           wordings=s2.wordings, **extra)

    def fit(self, features, variant: str, **overrides: Any):
        from micro_rm.train.stage1 import fit_stage1

        return fit_stage1(features, self.stage1_config(variant, **overrides), progress=self.progress)

    def evaluate(self, model, features) -> dict[str, Any]:
        """Routed accuracy per attribute, mean, NLL and ECE of ``model`` on ``features``."""
        return _evaluation(model.predict_proba(features.chosen, features.rejected, features.route),
                           features.attributes)

    def adapt(self, model, budget: int, seed: int) -> tuple[Any, dict[str, Any]]:
        from micro_rm.train.stage2 import adapt_router, draw_budget

        rows = draw_budget(self.pool_ctx.attributes, budget, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # budgets were checked against the data up front
            return adapt_router(model, self.pool_ctx.subset(rows), self.adapt_config(budget, seed),
                                progress=False)

    # ---------------------------------------------------------------- the protocol

    def run(self) -> Path:
        config = self.config
        self.load_data()
        with self.timed("encode"):
            self.encode()
        with self.timed("stage 1"):
            variants = self.stage1_grid()
        chosen = self.select(variants)
        self.labels = self.supervision_labels(chosen)
        with self.timed("stage 2"):
            self.stage2(variants, chosen)
        with self.timed("stage 1"):
            methods = self.baselines()
        methods.update(self.hyre_rows(chosen))
        methods["micro-stage1"] = _row(chosen["stage1_eval"], self.labels["micro-stage1"])
        methods["micro"] = _mean_row(chosen["stage2_evals"], self.labels["micro"])
        if config.oracle:
            with self.timed("stage 1"):
                methods["oracle"] = self.oracle()
        with self.timed("curves"):
            curve = self.budget_curve(chosen, methods)
        results = self.results(variants, chosen, methods, curve)
        if config.users.enabled:
            results["users"] = self.users(chosen)
        with self.timed("curves"):
            self.generalisation(results, chosen, methods)
        self.save_models(chosen)
        results["seconds"] = round(time.perf_counter() - self.start, 1)
        results["timing"] = {**{step: round(s, 1) for step, s in self.timing.items()},
                             "other": round(results["seconds"] - sum(self.timing.values()), 1)}
        from micro_rm.experiment.report import write_experiment_report

        folder = write_experiment_report(results, self.out)
        self.log(f"report: {folder / 'report.md'}")
        return folder

    def load_data(self) -> None:
        from micro_rm.data.split import select_split

        config = self.config
        source = load_records(config.data, config.path)
        target = load_records(config.eval_data, config.path) if config.eval_data else source
        self.cross = config.eval_data is not None
        self.train = select_split(source, "train")
        self.pool = select_split(target, "train") if self.cross else self.train
        self.test = select_split(target, "test")
        where = config.path or "config"
        for name, part in (("train", self.train), ("test", self.test), ("stage-2 train", self.pool)):
            if not part:
                raise MicroRMError(f"{where}: the {name} split of the data is empty; the canonical split "
                                   "needs several distinct prompts")
        counts_test = Counter(r.get("attribute") for r in self.test)
        counts_pool = Counter(r.get("attribute") for r in self.pool)
        self.attributes = sorted(a for a in counts_test if a is not None)
        if not self.attributes:
            raise MicroRMError(f"{where}: the test pairs carry no `attribute`, so there is nothing to report "
                               "per attribute; use a builder that sets it")
        if None in counts_test:
            # One evaluation set for every method: the oracle, the budget and HyRe all need an attribute.
            self.test = [r for r in self.test if r.get("attribute") is not None]
            self.notes.append(f"{counts_test[None]} test pairs without an `attribute` are left out of every "
                              "method's accuracy (no attribute to report them under, to fit an oracle on or "
                              "to draw a budget from).")
        missing = [a for a in self.attributes if counts_pool.get(a, 0) == 0]
        if missing:
            raise MicroRMError(f"{where}: attribute(s) {', '.join(missing)} have test pairs but no train "
                               "pairs to draw the stage-2 budget from")
        smallest = min(self.attributes, key=lambda a: counts_pool[a])
        short = [a for a in self.attributes if counts_pool[a] < config.stage2.budget]
        if short:   # the rule of `micro-rm adapt` (draw_budget): a smaller group is used whole
            message = (f"stage2.budget = {config.stage2.budget} pairs per attribute is more than "
                       + ", ".join(f"{a!r} ({counts_pool[a]})" for a in short)
                       + " hold; all of their train pairs are used")
            warnings.warn(message, stacklevel=3)
            self.notes.append(message + ".")
        self.budgets = [b for b in config.budget_curve.budgets if b <= counts_pool[smallest]]
        skipped = [b for b in config.budget_curve.budgets if b > counts_pool[smallest]]
        if skipped:
            message = (f"budget curve: B = {', '.join(map(str, skipped))} skipped, more than attribute "
                       f"{smallest!r}'s {counts_pool[smallest]} train pairs")
            warnings.warn(message, stacklevel=3)
            self.notes.append(message + ".")
        small = min(self.attributes, key=lambda a: counts_test[a])
        if config.hyre.m >= counts_test[small]:
            raise MicroRMError(f"{where}: hyre.m = {config.hyre.m} labelled test pairs per attribute, but "
                               f"attribute {small!r} has only {counts_test[small]} test pairs; lower hyre.m")
        self.log(f"data: {len(self.train)} train pairs, {len(self.test)} test pairs, "
                 f"{len(self.pool) if self.cross else 'same'} stage-2 pool; attributes {', '.join(self.attributes)}")

    def encode(self) -> None:
        from micro_rm.features.backbones import load_backbone
        from micro_rm.features.cache import FeatureCache
        from micro_rm.features.featurize import featurize

        b = self.config.backbone
        backbone = self.backbone_arg if self.backbone_arg is not None else b.name
        if isinstance(backbone, str):
            self.backbone_name = backbone
            backbone = load_backbone(backbone, max_length=b.max_length, device=self.device, batch_size=b.batch_size)
        else:
            self.backbone_name = getattr(backbone, "name", "custom")
        cache = FeatureCache(self.cache_dir)
        start, encoded = time.perf_counter(), 0

        def feats(records, router_input, context_in_reward=b.context_in_reward):
            nonlocal encoded
            features, stats = featurize(records, backbone, cache, router_input=router_input,
                                        context_in_reward=context_in_reward, batch_size=b.batch_size,
                                        progress=self.progress)
            encoded += stats.encoded
            return features

        self.feats = feats                        # later steps featurize new phrasings / views
        protocols = list(dict.fromkeys(v.protocol for v in self.config.stage1.variants))
        self.train_feats = {p: feats(self.train, p) for p in protocols}
        self.test_feats = {p: feats(self.test, p) for p in protocols}
        self.test_ctx = self.test_feats.get("context") or feats(self.test, "context")
        self.pool_ctx = (feats(self.pool, "context") if self.cross or "context" not in self.train_feats
                         else self.train_feats["context"])
        if self.fair_rows():
            self.train_reward_ctx = feats(self.train, "context", context_in_reward=True)
            self.test_reward_ctx = feats(self.test, "context", context_in_reward=True)
        else:
            self.notes.append("No single-ctx / static-ctx rows: " + (
                "every baseline already sees the context in its reward features (backbone.context_in_reward)."
                if b.context_in_reward else "no train pair has a context, so they would repeat single / static."))
        self.encode_seconds, self.encoded = time.perf_counter() - start, encoded
        self.log(f"features: {encoded} texts encoded ({self.encode_seconds:.0f} s), the rest from the cache")

    def fair_rows(self) -> bool:
        """Whether to train the baselines that see the context in their reward features
        (``single-ctx``, ``static-ctx``): only when the train pairs have contexts that the plain
        baselines do not see."""
        return not self.config.backbone.context_in_reward and any(r.get("context") for r in self.train)

    def supervision_labels(self, chosen: dict[str, Any]) -> dict[str, str]:
        """What each method was given, in words (the Supervision column). A context sentence that
        is the same on every pair of an attribute and differs between attributes tells the model the
        attribute of each pair: it is said to be equivalent to attribute labels."""
        contexts: dict[Any, set[str]] = {}
        for record in self.train:
            if record.get("context"):
                contexts.setdefault(record.get("attribute"), set()).add(record["context"])
        covered = sum(bool(r.get("context")) for r in self.train)
        where = "every train pair" if covered == len(self.train) else f"{covered / len(self.train):.0%} of train pairs"
        if None not in contexts and all(len(c) == 1 for c in contexts.values()) \
                and len(set().union(*contexts.values())) == len(contexts):
            context = f"one context sentence per attribute on {where} (≡ attribute labels)"
        else:
            context = f"each pair's context sentence on {where}"
        m, budget = self.config.hyre.m, self.config.stage2.budget
        given = f"binary pairs + {context}"
        in_reward = f"{given}, in the reward features"
        plain = in_reward if contexts and self.config.backbone.context_in_reward else "binary pairs, no context"
        stage1 = f"{given}, read by the router" if contexts and chosen["protocol"] == "context" else plain
        if chosen["protocol"] == "context" and not self.cross:
            stage2 = f"micro-stage1 + stage 2 on B = {budget} of the same train pairs / attribute (seen at stage 1)"
        else:
            source = f"{self.config.eval_data.builder}'s" if self.cross else "the"
            kind = "context pairs" if any(r.get("context") for r in self.pool) else "pairs (no context)"
            stage2 = f"micro-stage1 + B = {budget} {kind} / attribute from {source} train split"
        return {"single": plain, "static": plain, "shared-base": plain,
                "single-ctx": in_reward, "static-ctx": in_reward,
                "hyre": f"{plain} + {m} labelled test pairs / attribute (scored on the other test prompts)",
                "micro-hyre": f"micro-stage1 + {m} labelled test pairs / attribute (scored on the other test prompts)",
                "micro-stage1": stage1, "micro": stage2,
                "oracle": "attribute labels on every train pair (one BT head per attribute)"}

    def stage1_grid(self) -> list[dict[str, Any]]:
        """Each MiCRo variant of the config: stage 1 fitted and scored on the test pairs."""
        s1 = self.config.stage1
        variants = []
        for v in s1.variants:
            alpha = s1.alpha if v.alpha is None else v.alpha
            model, history = self.fit(self.train_feats[v.protocol], "micro", balance=v.balance, alpha=alpha)
            stage1_eval = self.evaluate(model, self.test_feats[v.protocol])
            variants.append({"protocol": v.protocol, "balance": v.balance, "alpha": alpha, "model": model,
                             "val_nll": history["val_loss"], "history": history, "stage1_eval": stage1_eval})
            self.log(f"stage 1 micro ({v.protocol}, {v.balance}, α={alpha:g}): {stage1_eval['mean']:.3f}")
        return variants

    def stage2(self, variants: list[dict[str, Any]], chosen: dict[str, Any]) -> None:
        """Adapt each variant's router with B context pairs per attribute: over every budget draw for
        the chosen variant (its rows are the report's), over the first draw only for the others
        (their stage-2 column informs; nothing is selected on it)."""
        budget = self.config.stage2.budget
        for v in variants:
            seeds = self.seeds() if v is chosen else self.seeds()[:1]
            adapted = [self.adapt(v["model"], budget, seed) for seed in seeds]
            v["stage2_evals"] = [self.evaluate(model, self.test_ctx) for model, _ in adapted]
            v["adapted"], v["taus"] = adapted[0][0], [_chosen(info) for _, info in adapted]
            self.log(f"stage 2 micro ({v['protocol']}, {v['balance']}, α={v['alpha']:g}), B={budget}, "
                     f"{len(seeds)} draw(s): {np.mean([e['mean'] for e in v['stage2_evals']]):.3f}")

    def seeds(self) -> list[int]:
        return [self.config.seed + i for i in range(self.config.budget_curve.seeds)]

    def select(self, variants: list[dict[str, Any]]) -> dict[str, Any]:
        rule = self.config.stage1.select
        usable = [v for v in variants if np.isfinite(v["val_nll"])]
        if rule == "validation" and usable:
            chosen = self.within_one_standard_error(usable)
            self.selection = ("the first listed variant whose stage-1 validation NLL (mixture NLL on "
                              "held-out train prompts, no test labels) is within one standard error of "
                              "the lowest, paired over the validation pairs")
        else:
            chosen = variants[0]
            self.selection = "the first variant listed in the config (declared primary)"
        chosen["selected"] = True
        self.notes.insert(0, f"`micro` = variant {chosen['protocol']} / {chosen['balance']} "
                             f"(α={chosen['alpha']:g}), chosen by {self.selection}.")
        return chosen

    def within_one_standard_error(self, variants: list[dict[str, Any]]) -> dict[str, Any]:
        """The first listed variant whose validation NLL is not worse than the lowest by more than
        one standard error of the per-pair difference: NLL gaps of a few thousandths are noise
        and must not overrule the declared order."""
        import torch

        from micro_rm.train.stage1 import validation_split

        def per_pair(v: dict[str, Any]) -> np.ndarray:
            features = self.train_feats[v["protocol"]]
            held = validation_split(features.prompts, self.config.stage1.val_fraction)[1]
            rows = features.subset(held)
            with torch.no_grad():
                diff = torch.as_tensor(np.asarray(rows.chosen - rows.rejected, dtype=np.float32))
                route = torch.as_tensor(np.asarray(rows.route, dtype=np.float32))
                return -v["model"].log_likelihood(diff.to(self.device), route.to(self.device)).cpu().numpy()

        losses = [per_pair(v) for v in variants]
        best = int(np.argmin([l.mean() for l in losses]))
        for v, l in zip(variants, losses):
            gap = l - losses[best]
            if gap.mean() <= gap.std(ddof=1) / np.sqrt(len(gap)):
                return v
        return variants[best]   # a single validation pair has no standard error

    def baselines(self) -> dict[str, dict[str, Any]]:
        """single, static and shared-base on binary pairs; single-ctx and static-ctx with the context
        in their reward features (MiCRo's router reads it, so these get the same information)."""
        features = next(iter(self.train_feats.values()))
        test = next(iter(self.test_feats.values()))
        runs = [(name, name, features, test) for name in ("single", "static")]
        if self.fair_rows():
            runs += [(f"{name}-ctx", name, self.train_reward_ctx, self.test_reward_ctx) for name in ("single", "static")]
        methods = {}
        for name, variant, train_features, test_features in runs:
            model, _ = self.fit(train_features, variant)
            methods[name] = _row(self.evaluate(model, test_features), self.labels[name])
            self.log(f"{name}: {methods[name]['mean']:.3f}")
        shared, _ = self.fit(features, "shared-base")
        # Best head chosen on the pooled *train* pairs (no attribute or test label), then scored on test.
        train_acc = (shared.head_probs(features.chosen, features.rejected) > 0.5).mean(axis=0)
        best = int(np.argmax(train_acc))
        probs = shared.head_probs(test.chosen, test.rejected)[:, best]
        methods["shared-base"] = _row(_evaluation(probs, test.attributes),
                                      f"{self.labels['shared-base']} (head {best}: best on train pairs)")
        self.shared = shared
        self.log(f"shared-base (head {best}): {methods['shared-base']['mean']:.3f}")
        return methods

    def hyre_rows(self, chosen: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """HyRe on the shared-base heads and on the chosen variant's stage-1 heads, over the seeds."""
        from micro_rm.train.hyre import evaluate_hyre

        m, rows = self.config.hyre.m, {}
        for name, model in (("hyre", self.shared), ("micro-hyre", chosen["model"])):
            runs = [evaluate_hyre(model, self.test_ctx, m=m, seed=seed) for seed in self.seeds()]
            per = {a: float(np.mean([r["per_attribute"][a] for r in runs])) for a in runs[0]["per_attribute"]}
            scored = np.zeros((len(runs), len(self.test_ctx)), dtype=bool)
            correct = np.zeros_like(scored)
            for s, run in enumerate(runs):
                scored[s, run["scored"]], correct[s, run["scored"]] = True, run["probs"] > 0.5
            rows[name] = {"mean": float(np.mean(list(per.values()))), "per_attribute": per,
                          "supervision": self.labels[name], "outcome": (correct, scored)}
            self.log(f"{name}: {rows[name]['mean']:.3f}")
        return rows

    def oracle(self) -> dict[str, Any]:
        """One BT head per attribute on all of that attribute's train pairs, scored on its test pairs."""
        test_attr = np.array(self.test_ctx.attributes, dtype=object)
        pool_attr = np.array(self.pool_ctx.attributes, dtype=object)
        probs = np.zeros(len(self.test_ctx))
        for attribute in self.attributes:
            train = self.pool_ctx.subset(np.flatnonzero(pool_attr == attribute))
            fraction = self.config.stage1.val_fraction if len(set(train.prompts)) >= 10 else 0.0
            model, _ = self.fit(train, "single", val_fraction=fraction)
            rows = np.flatnonzero(test_attr == attribute)
            test = self.test_ctx.subset(rows)
            probs[rows] = model.predict_proba(test.chosen, test.rejected, test.route)
        row = _row(_evaluation(probs, self.test_ctx.attributes), self.labels["oracle"])
        self.log(f"oracle: {row['mean']:.3f}")
        return row

    def budget_curve(self, chosen: dict[str, Any], methods: dict[str, Any]) -> dict[str, Any]:
        if not self.budgets:
            return {}
        means, stds = [], []
        for budget in self.budgets:
            if budget == self.config.stage2.budget:
                evals = chosen["stage2_evals"]
            else:
                evals = [self.evaluate(self.adapt(chosen["model"], budget, seed)[0], self.test_ctx)
                         for seed in self.seeds()]
            values = [e["mean"] for e in evals]
            means.append(float(np.mean(values)))
            stds.append(_seed_std(values))
            self.log(f"budget {budget}: {means[-1]:.3f}" + (f" ± {stds[-1]:.3f}" if stds[-1] is not None else ""))
        names = {"micro stage 1": "micro-stage1", "single": "single", "single-ctx": "single-ctx", "oracle": "oracle"}
        reference = {label: methods[name]["mean"] for label, name in names.items() if name in methods}
        return {"budgets": self.budgets, "mean": means, "std": stds, "std_ddof": 1, "seeds": len(self.seeds()),
                "reference": reference}

    def generalisation(self, results: dict[str, Any], chosen: dict[str, Any], methods: dict[str, Any]) -> None:
        """Held-out phrasings and new users' learning curve (issue: personalization that generalizes)."""
        from micro_rm.experiment.phrasings import phrasing_evaluation
        from micro_rm.experiment.users import learning_curve
        from micro_rm.online.hedge import DEFAULT_ETA

        if any(isinstance(v, list) for v in self.config.data.contexts.values()):
            results["phrasings"] = phrasing_evaluation(self, chosen, lambda rs: self.feats(rs, "context"))
        curve = self.config.user_curve
        if curve.enabled:
            # The prompt-protocol features are reused when a stage-1 variant already built them.
            pool_prompt = None if self.cross else self.train_feats.get("prompt")
            test_prompt = self.test_feats.get("prompt")
            pool = {"context": self.pool_ctx,
                    "no context": pool_prompt if pool_prompt is not None else self.feats(self.pool, "prompt")}
            test = {"context": self.test_ctx,
                    "no context": test_prompt if test_prompt is not None else self.feats(self.test, "prompt")}
            results["user_curve"] = learning_curve(
                chosen["model"], pool, test, eta=curve.eta or DEFAULT_ETA, seeds=curve.seeds,
                seed=self.config.seed, oracle=methods.get("oracle", {}).get("mean"))
            self.log("new users (no context, random): " + ", ".join(
                f"n={n}: {m:.3f}" for n, m in zip(results["user_curve"]["n"],
                                                  results["user_curve"]["curves"]["no context / random"]["mean"])))

    def users(self, chosen: dict[str, Any]) -> dict[str, Any]:
        """Per-user online Hedge: the chosen stage-1 model is shared; each user's state learns
        from ``users.feedback`` of that user's train pairs; accuracy on the user's test pairs."""
        from micro_rm.online import UserState

        settings, model = self.config.users, chosen["model"]
        test = self.test_feats[chosen["protocol"]]
        test_users = np.array([r.get("user_id") or "" for r in self.test], dtype=object)
        pool_users = np.array([r.get("user_id") or "" for r in self.pool], dtype=object)
        pool = self.pool_ctx if self.cross or chosen["protocol"] == "context" else self.train_feats["prompt"]
        rows, rng = {}, np.random.default_rng(self.config.seed)
        for user in sorted(set(test_users) - {""}):
            candidates = np.flatnonzero(pool_users == user)
            feedback = rng.choice(candidates, size=min(settings.feedback, len(candidates)), replace=False)
            fb = pool.subset(feedback)
            state = UserState.fresh(user, model_id="experiment", num_heads=model.config.num_heads)
            state = state.update(model.head_probs(fb.chosen, fb.rejected))
            mine = test.subset(np.flatnonzero(test_users == user))
            heads = model.head_probs(mine.chosen, mine.rejected)                 # [n, K]
            prior = model.router_weights(mine.route)                             # [n, K]
            after = (state.weights(np.log(np.clip(prior, 1e-30, 1.0)), settings.eta) * heads).sum(axis=1)
            before = (prior * heads).sum(axis=1)
            rows[user] = {"test_pairs": len(mine), "feedback_pairs": len(feedback),
                          "before": float((before > 0.5).mean()), "after": float((after > 0.5).mean()),
                          "head_weights": state.weights(np.zeros((1, model.config.num_heads)),
                                                        settings.eta)[0].round(4).tolist()}
        return {"eta": settings.eta, "feedback": settings.feedback, "per_user": rows}

    def save_models(self, chosen: dict[str, Any]) -> None:
        """The chosen variant's stage-1 model and its seed-0 stage-2 model, for `micro-rm eval`."""
        b = self.config.backbone
        for name, model, router_input in (("model-stage1", chosen["model"], chosen["protocol"]),
                                          ("model", chosen["adapted"], "context")):
            model.config.feature = {"router_input": router_input, "context_in_reward": b.context_in_reward}
            model.config.data = {**model.config.data, "source": self.config.data.source or self.config.data.builder,
                                 "pairs": len(self.train)}
            model.save_pretrained(self.out / name)

    def intervals(self, methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace each row's per-pair ``outcome`` by 95% bootstrap intervals of its mean and
        per-attribute accuracies (test prompts resampled, the same draws for every method), and
        return the paired differences named in ``DIFFERENCES``."""
        from micro_rm.eval.bootstrap import PromptBootstrap, excludes_zero, percentile_interval

        boot = PromptBootstrap(self.test_ctx.prompts, self.test_ctx.attributes, seed=self.config.seed)
        samples = {}
        for name, row in methods.items():
            samples[name] = boot.samples(*row.pop("outcome"))
            row.update(boot.intervals(samples[name]))
        differences = []
        for name, against in DIFFERENCES:
            if name in samples and against in samples:
                ci = percentile_interval(samples[name]["mean"] - samples[against]["mean"])
                differences.append({"method": name, "against": against, "ci95": ci, "excludes_zero": excludes_zero(ci),
                                    "difference": methods[name]["mean"] - methods[against]["mean"]})
        return differences

    def results(self, variants, chosen, methods, curve) -> dict[str, Any]:
        from micro_rm.eval.bootstrap import LEVEL, RESAMPLES
        from micro_rm.eval.metrics import head_attribute_matrix, router_statistics

        config = self.config
        model = chosen["model"]
        heads = head_attribute_matrix(model.head_probs(self.test_ctx.chosen, self.test_ctx.rejected),
                                      self.test_ctx.attributes)
        stage2_router = router_statistics(chosen["adapted"].router_weights(self.test_ctx.route),
                                          self.test_ctx.attributes)
        stage1_router = router_statistics(model.router_weights(self.test_feats[chosen["protocol"]].route),
                                          self.test_ctx.attributes)
        ordered = {name: methods[name] for name in PRIMARY_METHODS if name in methods}
        differences = self.intervals(ordered)
        name = config.data.builder + (f" → {config.eval_data.builder}" if self.cross else "")
        return {
            "title": config.title,
            "dataset": {"name": name, "train_pairs": len(self.train), "test_pairs": len(self.test),
                        "attributes": self.attributes,
                        **({"stage2_pool_pairs": len(self.pool)} if self.cross else {})},
            "settings": {"backbone": self.backbone_name, "heads": config.stage1.heads,
                         "stage1 epochs": config.stage1.epochs, "budget": config.stage2.budget,
                         "tau": config.stage2.tau,
                         "stage2": (f"{config.stage2.algorithm}, update {config.stage2.update}, new wordings as "
                                    f"{config.stage2.wordings}, folds hold out {config.stage2.heldout}"
                                    if config.stage2.algorithm == "safe"
                                    else config.stage2.algorithm),
                         "hyre_m": config.hyre.m,
                         "seeds": config.budget_curve.seeds,
                         "context_in_reward": config.backbone.context_in_reward,
                         "micro": f"{chosen['protocol']} / {chosen['balance']} (α={chosen['alpha']:g})"},
            "methods": ordered,
            "differences": differences,
            "bootstrap": {"unit": "test prompt", "resamples": RESAMPLES, "level": LEVEL, "seed": config.seed},
            "variants": [{"protocol": v["protocol"], "balance": f"{v['balance']} (α={v['alpha']:g})",
                          "stage1": v["stage1_eval"]["mean"],
                          "stage2": float(np.mean([e["mean"] for e in v["stage2_evals"]])),
                          "stage2_draws": len(v["stage2_evals"]),
                          "tau": _tau_label(config.stage2.tau, v["taus"]), "val_nll": v["val_nll"],
                          "selected": bool(v.get("selected")),
                          "stage1_per_attribute": v["stage1_eval"]["per_attribute"],
                          "stage2_per_attribute": _mean_row(v["stage2_evals"], "")["per_attribute"]}
                         for v in variants],
            "selection": self.selection,
            "head_attribute": {"attributes": heads["attributes"], "accuracy": heads["accuracy"],
                               "best_head": heads["best_head"],
                               "oracle_mean_accuracy": heads["oracle_mean_accuracy"]},
            "router_weights": stage2_router["per_attribute"],
            "router": {"stage1": _router_summary(stage1_router), "stage2": _router_summary(stage2_router),
                       "stage2_taus": _tau_counts(chosen["taus"])},
            "budget_curve": curve,
            "paper": dict(config.paper),
            "notes": self.notes + list(config.notes),
            "encoding": {"texts_encoded": self.encoded, "seconds": round(self.encode_seconds, 1)},
            "machine": machine_description(),
            "command": self.command,
        }


def _evaluation(probs: np.ndarray, attributes: Sequence[Optional[str]]) -> dict[str, Any]:
    """Accuracy per attribute, its mean over attributes, NLL and ECE of probabilities ``probs`` [N]."""
    from micro_rm.eval.metrics import expected_calibration_error, nll, pairwise_accuracy

    result = pairwise_accuracy(probs, attributes)
    return {"mean": result["mean_accuracy"], "per_attribute": result["per_attribute"],
            "nll": nll(probs), "ece": expected_calibration_error(probs), "probs": probs}


def _row(evaluation: dict[str, Any], supervision: str) -> dict[str, Any]:
    """A method's row; ``outcome`` (per-pair correctness, scored mask) is replaced by intervals
    in :meth:`_Run.intervals` before the row is written."""
    return {"mean": evaluation["mean"], "per_attribute": evaluation["per_attribute"],
            "nll": evaluation["nll"], "ece": evaluation["ece"], "supervision": supervision,
            "outcome": (evaluation["probs"] > 0.5, None)}


def _mean_row(evaluations: Sequence[dict[str, Any]], supervision: str) -> dict[str, Any]:
    """Per-attribute accuracy averaged over the seeds' draws (and NLL / ECE likewise)."""
    names = list(evaluations[0]["per_attribute"])
    per = {a: float(np.mean([e["per_attribute"][a] for e in evaluations])) for a in names}
    return {"mean": float(np.mean(list(per.values()))), "per_attribute": per,
            "nll": float(np.mean([e["nll"] for e in evaluations])),
            "ece": float(np.mean([e["ece"] for e in evaluations])),
            "std": _seed_std([e["mean"] for e in evaluations]), "supervision": supervision,
            "outcome": (np.stack([e["probs"] > 0.5 for e in evaluations]), None)}


def _seed_std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (ddof = 1) over the budget draws; None for a single draw."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _chosen(info: dict[str, Any]) -> float | str:
    """What stage 2 chose, as the report counts it: a τ of the heads update, "keep", or a named
    candidate such as "contexts 0.1" or "corrections 0.01"."""
    from micro_rm.train.stage2 import KEEP, Candidate, candidate_name

    if info["tau"] == KEEP:
        return KEEP
    chosen = Candidate(info["update"], info["tau"], info["wordings"])
    return info["tau"] if chosen == Candidate("heads", info["tau"]) else candidate_name(chosen)


def _tau_text(tau: float | str) -> str:
    """A chosen τ as the report writes it: 0.001, 10, or a named choice such as "keep"."""
    return f"{tau:g}" if isinstance(tau, (int, float)) else str(tau)


def _tau_counts(chosen: Sequence[float | str]) -> dict[str, int]:
    """How often each τ was chosen over the budget draws: numbers ascending, then named choices."""
    counts = Counter(chosen)
    order = sorted(counts, key=lambda t: (isinstance(t, str), str(t) if isinstance(t, str) else t))
    return {_tau_text(t): counts[t] for t in order}


def _tau_label(tau: Any, chosen: Sequence[float | str]) -> Any:
    if tau != "auto":
        return tau
    common = _tau_text(Counter(chosen).most_common(1)[0][0])
    return f"auto → {common}" if len(set(chosen)) == 1 else f"auto → {common} (mostly)"


def _router_summary(stats: dict[str, Any]) -> dict[str, Any]:
    return {"mean_entropy": stats["mean_entropy"], "head_usage": stats["head_usage"],
            "top_head_share": stats["top_head_share"]}
