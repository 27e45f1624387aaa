"""Stage 1: fit the heads and the router on cached features (METHOD.md Eq. 2–4) and the baselines.

    L = −(1/n) Σ log Σ_k π_k(x) σ(Δ_k)  +  α · Σ_k π_k log π_k

The four variants share this one loop and differ only in ``stage1_loss`` (``shared-base`` fits
each head by its own BT loss, as HyRe's ensemble). The backbone never runs here.

>>> model, history = fit_stage1(features, Stage1Config(heads=4, epochs=10))   # doctest: +SKIP
>>> history["val_loss"], history["best_epoch"]                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from dataclasses import asdict
from typing import Any, Iterator

import numpy as np
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.features.store import read_rows, release_pages
from micro_rm.model.config import MixtureConfig
from micro_rm.model.losses import bt_loss, mixture_bt_loss, negative_entropy
from micro_rm.model.mixture import MixtureRewardModel
from micro_rm.progress import progress_bar
from micro_rm.train.config import Stage1Config
from micro_rm.train.schedule import lr_at

logger = logging.getLogger(__name__)

BLOCK_ROWS = 8192  # rows gathered (and cast to float32) at once; batches are slices of a block


def fit_stage1(features: PairFeatures, config: Stage1Config | None = None, *,
               progress: bool = True) -> tuple[MixtureRewardModel, dict[str, Any]]:
    """Fit a model of ``config.variant`` on ``features``; return it (in eval mode) and its history.

    ``history`` holds ``train_loss`` (objective of the kept epoch), ``val_loss`` (validation NLL of
    the kept epoch; NaN without validation), ``best_epoch``, ``pairs`` and ``epochs`` (one row
    per epoch: epoch, train_loss, val_loss, seconds).
    """
    config = config or Stage1Config()
    check_features(features)
    train_idx, val_idx = validation_split(features.prompts, config.val_fraction)
    model = initial_model(features, config)
    rows = _Rows(features, config.device)
    optimizer = _adamw([p for p in model.parameters() if p.requires_grad], config)
    shuffle = torch.Generator().manual_seed(config.seed)
    context_dim = model.config.context_dim if model.config.variant == "micro" else 0
    batch = config.batch_size * config.grad_accum
    block = batch * max(1, BLOCK_ROWS // batch)                         # a block is whole batches
    total = config.epochs * math.ceil(len(train_idx) / batch)
    warmup = round(config.warmup_ratio * total)
    epochs, best, step, start = [], None, 0, time.perf_counter()
    bar = progress_bar(total=total, desc=f"stage 1 ({config.variant}, K={model.config.num_heads})", unit="step",
                       enabled=progress, leave=False)
    with _small_tensor_cpu(config.device), bar:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = train_idx[torch.randperm(len(train_idx), generator=shuffle).numpy()]
            loss_sum = torch.zeros((), device=config.device)
            for chunk in np.array_split(order, range(block, len(order), block)):
                diff, route = rows.take(chunk)                           # [block, d], [block, d_r]
                for d, u in zip(diff.split(batch), route.split(batch)):
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * lr_at(step, total, warmup)
                    if context_dim and config.context_dropout:
                        u = drop_context(u, context_dim, config.context_dropout, shuffle)
                    loss = stage1_loss(model, d, u, config.alpha, config.balance)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach() * len(d)
                    step += 1
                bar.update(math.ceil(len(chunk) / batch))
                bar.set_postfix(loss=f"{loss.item():.4f}")
            row = {"epoch": epoch, "train_loss": loss_sum.item() / len(train_idx),
                   "val_loss": validation_loss(model, rows, val_idx), "seconds": time.perf_counter() - start}
            epochs.append(row)
            if len(val_idx) and (best is None or row["val_loss"] < best[0]["val_loss"]):
                best = (row, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[1])
    kept = best[0] if best is not None else epochs[-1]
    history = {"train_loss": kept["train_loss"], "val_loss": kept["val_loss"], "best_epoch": kept["epoch"],
               "pairs": {"train": len(train_idx), "validation": len(val_idx)},
               "seconds": time.perf_counter() - start, "epochs": epochs}
    model.config.training = asdict(config)
    model.config.metrics = {k: history[k] for k in ("train_loss", "val_loss", "best_epoch")}
    return model.eval(), history


def stage1_loss(model: MixtureRewardModel, diff: torch.Tensor, route: torch.Tensor,
                alpha: float, balance: str) -> torch.Tensor:
    """The stage-1 objective of one batch (a scalar): ``diff`` [B, d] = chosen − rejected features,
    ``route`` [B, d_r]."""
    delta = model.head_rewards(diff)                                     # [B, K]
    if model.config.variant == "shared-base":                            # each head its own BT model
        return bt_loss(delta).mean()
    log_weights = model.router_log_weights(route)                        # [B, K]
    loss = mixture_bt_loss(delta, log_weights).mean()
    if alpha > 0 and model.config.variant in ("micro", "static"):        # only these have weights to learn
        loss = loss + alpha * negative_entropy(log_weights, balance)
    return loss


def drop_context(route: torch.Tensor, context_dim: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """``route`` [B, d_r] with emb(context) zeroed ("no context") on a random ``rate`` of rows."""
    drop = torch.rand(len(route), generator=generator) < rate                       # [B]
    if not drop.any():
        return route
    route = route.clone()
    route[drop.to(route.device), -context_dim:] = 0.0
    return route


def initial_model(features: PairFeatures, config: Stage1Config) -> MixtureRewardModel:
    """The untrained model ``fit_stage1`` starts from (same seed, same weights), its config recording
    the backbone and feature settings of ``features``; on the separate route layout a ``micro``
    router gets the training contexts as its prototypes."""
    prototypes = None
    if config.variant == "micro" and features.context_dim:
        prototypes = context_prototypes(features.route, features.context_dim, config.max_prototypes, config.seed)
    model_config = MixtureConfig(num_heads=config.heads, reward_dim=features.chosen.shape[1],
                                 route_dim=features.route.shape[1], variant=config.variant,
                                 router=config.router, router_hidden=config.router_hidden,
                                 context_dim=features.context_dim,
                                 context_encoding=features.context_encoding,
                                 context_prototypes=0 if prototypes is None else len(prototypes),
                                 context_temperature=config.context_temperature,
                                 backbone=dict(features.fingerprint), feature=features.settings.record())
    with torch.random.fork_rng(devices=[]):                               # seed without touching global state
        torch.manual_seed(config.seed)
        model = MixtureRewardModel(model_config)
    if prototypes is not None:
        model.router.set_prototypes(torch.from_numpy(prototypes))
    return model.to(config.device)


def context_prototypes(route: np.ndarray, context_dim: int, max_count: int, seed: int) -> np.ndarray:
    """The distinct non-zero context embeddings of ``route`` [N, d_r], unit-normalised [M, d_c];
    k-means centres (M = ``max_count``) when there are more (e.g. one persona per pair)."""
    distinct: dict[bytes, np.ndarray] = {}
    for start in range(0, len(route), BLOCK_ROWS):                       # memory-mapped safe
        block = np.asarray(route[start:start + BLOCK_ROWS, -context_dim:], dtype=np.float32)
        for row in block[np.linalg.norm(block, axis=1) > 0]:
            distinct.setdefault(row.tobytes(), row)
    if not distinct:
        return np.zeros((0, context_dim), dtype=np.float32)
    unit = np.stack(list(distinct.values()))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    if len(unit) <= max_count:
        return unit
    rng = np.random.default_rng(seed)
    centres = unit[rng.choice(len(unit), max_count, replace=False)]
    for _ in range(10):                                                  # spherical k-means
        nearest = (unit @ centres.T).argmax(1)
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, unit)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centres)
    return centres.astype(np.float32)


@torch.no_grad()
def validation_loss(model: MixtureRewardModel, rows: "_Rows", index: np.ndarray) -> float:
    """The data term of the objective (no regulariser) on ``index``; NaN when it is empty."""
    if len(index) == 0:
        return math.nan
    model.eval()
    total = sum(stage1_loss(model, *rows.take(chunk), alpha=0.0, balance="example").item() * len(chunk)
                for chunk in np.array_split(index, range(BLOCK_ROWS, len(index), BLOCK_ROWS)))
    return total / len(index)


def validation_split(prompts: list[str], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation pairs: a prompt is held out when the hash of
    ``"validation:" + prompt`` falls below ``fraction`` (salted: independent of the train/test split)."""
    if fraction == 0:
        return np.arange(len(prompts)), np.zeros(0, dtype=np.int64)
    draw = {p: int(hashlib.sha256(f"validation:{p}".encode()).hexdigest()[:8], 16) / 2 ** 32
            for p in set(prompts)}
    held = np.fromiter((draw[p] < fraction for p in prompts), dtype=bool, count=len(prompts))
    if held.all():
        raise MicroRMError(f"val_fraction={fraction} holds out every pair (only {len(draw)} distinct "
                           "prompt(s)); lower val_fraction or pass 0")
    if not held.any():
        logger.warning("val_fraction=%s selected no prompt (%d distinct); keeping the last epoch",
                       fraction, len(draw))
    return np.flatnonzero(~held), np.flatnonzero(held)


def check_features(features: PairFeatures) -> None:
    """Raise MicroRMError naming the field when ``features`` cannot be trained on."""
    n = len(features)
    if n == 0:
        raise MicroRMError("empty training set: the features hold 0 pairs")
    for name in ("chosen", "rejected", "route"):
        shape = getattr(features, name).shape
        if len(shape) != 2 or shape[0] != n:
            raise MicroRMError(f"features.{name} has shape {tuple(shape)}; expected [{n}, dim]")
    if features.rejected.shape != features.chosen.shape:
        raise MicroRMError(f"features.rejected has shape {features.rejected.shape}, but features.chosen "
                           f"has {features.chosen.shape}; both must be [N, d] from one backbone")
    if len(features.prompts) != n:
        raise MicroRMError(f"features.prompts has {len(features.prompts)} entries for {n} pairs")
    for name in ("chosen", "rejected", "route"):
        array = getattr(features, name)
        for start in range(0, n, 16_384):                     # chunked: memory-mapped arrays stay on disk
            finite = np.isfinite(array[start:start + 16_384]).all(axis=1)
            release_pages(array)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise MicroRMError(f"features.{name} row {row} holds NaN or inf (pair prompt "
                                   f"{features.prompts[row][:60]!r}); re-featurize that data")


class _Rows:
    """Gathers (chosen − rejected, route) rows as float32 tensors. In-RAM arrays are converted once;
    memory-mapped ones are read in file order and cast one block at a time, then their pages are
    released, so a float16 cache larger than RAM never becomes one float32 array."""

    def __init__(self, features: PairFeatures, device: str):
        self.features, self.device = features, device
        self.diff = self.route = None                                    # None: memory-mapped, read per block
        if type(features.chosen) is np.ndarray:
            diff = np.subtract(features.chosen, features.rejected, dtype=np.float32)
            self.diff = torch.from_numpy(diff).to(device)
        if type(features.route) is np.ndarray:
            self.route = torch.from_numpy(np.asarray(features.route, dtype=np.float32)).to(device)

    def take(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        f, rows = self.features, torch.from_numpy(index)
        order = np.argsort(index, kind="stable")                         # read in file order,
        ascending = index[order]                                         # write back in ``index``'s

        def gather(array: np.ndarray) -> np.ndarray:                     # [len(index), dim] float32
            out = np.empty((len(index), array.shape[1]), dtype=np.float32)
            return read_rows(array, ascending, out=out, positions=order)

        if self.diff is not None:
            diff = self.diff[rows]
        else:
            diff = gather(f.chosen)
            diff -= gather(f.rejected)                                   # in place: one block less in memory
            diff = torch.from_numpy(diff).to(self.device)
        route = self.route[rows] if self.route is not None else torch.from_numpy(gather(f.route)).to(self.device)
        return diff, route


@contextlib.contextmanager
def _small_tensor_cpu(device: str) -> Iterator[None]:
    """CPU settings for many tiny steps, restored afterwards. One thread: hand-offs cost more than
    they save on [32, 384] tensors (10× slower when another process holds a core). Flush
    denormals: Adam's moments of barely-used router weights decay into them (a 1.4× slower step)."""
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def _adamw(params: list[torch.nn.Parameter], config: Stage1Config) -> torch.optim.AdamW:
    try:  # the fused kernel halves the per-step cost on small models (torch ≥ 2.4 on CPU)
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
