"""The paper's Algorithm 1 as written (METHOD.md, Stage 2; Eq. 5): the whole router fine-tuned by
distilling Hedge targets, the heads frozen.

    for epoch t = 1..T:
        ω_i ← normalise( f_ψ(x_i, c_i) ⊙ exp(−L_i / τ) )           for every pair, once per epoch
        for each mini-batch:  minimise (1/|batch|) Σ_i CE(ω_i, f_ψ(x_i, c_i))   (AdamW)

with L_ik = −log σ(Δ_ik); for comparing with the paper (stage 2's ``adapt`` never reaches it).

>>> adapted, epochs = algorithm1(model, features, tau=1e-3)          # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from micro_rm.model.losses import bt_loss
from micro_rm.train.config import check_tau
from micro_rm.train.schedule import lr_at

if TYPE_CHECKING:
    from micro_rm.features.base import PairFeatures
    from micro_rm.model.mixture import MixtureRewardModel


def hedge_targets(log_prior: torch.Tensor, losses: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 5 in log space: ω = softmax(log f − L / τ), [B, K], [B, K] → [B, K].

    >>> hedge_targets(torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.0, math.log(3)]]), 1.0)
    tensor([[0.7500, 0.2500]])
    """
    return torch.softmax(log_prior - losses / check_tau(tau), dim=-1)


def algorithm1(model: "MixtureRewardModel", features: "PairFeatures", tau: float, *, epochs: int = 10,
               batch_size: int = 32, lr: float = 3e-2, seed: int = 0) -> tuple["MixtureRewardModel", list[dict[str, Any]]]:
    """Algorithm 1 on every row of ``features`` (route features with the contexts): a new model
    (the input is untouched) whose router was distilled for ``epochs`` T into the Hedge targets
    at ``tau``, by AdamW mini-batches of ``batch_size`` (shuffled with ``seed``) at a learning
    rate decayed linearly from ``lr`` to 0. The paper: τ = 1e-3, batch 32, T = 10 (its learning
    rate is not given). Returns the model and one row per epoch (epoch, ce, seconds)."""
    adapted = copy.deepcopy(model)
    deltas, route = adapted.frozen_deltas(features)                      # heads are frozen: L is data
    losses = bt_loss(deltas)                                             # L_ik = −log σ(Δ_ik), [N, K]
    optimizer = torch.optim.AdamW(list(adapted.router.parameters()), lr=lr, weight_decay=0.0)
    shuffle = torch.Generator().manual_seed(seed)
    total, step, rows, start = epochs * math.ceil(len(route) / batch_size), 0, [], time.perf_counter()
    adapted.train()
    for epoch in range(1, epochs + 1):
        with torch.no_grad():                                            # ω_i, held for the epoch
            targets = hedge_targets(adapted.router_log_weights(route), losses, tau)      # [N, K]
        ce_sum = 0.0
        for batch in torch.randperm(len(route), generator=shuffle).split(batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_at(step, total, warmup=0)
            ce = -(targets[batch] * adapted.router_log_weights(route[batch])).sum(-1).mean()   # CE(ω, f_ψ)
            optimizer.zero_grad(set_to_none=True)
            ce.backward()
            optimizer.step()
            ce_sum += ce.item() * len(batch)
            step += 1
        rows.append({"epoch": epoch, "ce": ce_sum / len(route), "seconds": time.perf_counter() - start})
    return adapted.eval(), rows
