"""The stage-1 objective as pure functions (METHOD.md Eq. 2–4).

Every function takes per-pair reward differences ``delta = r(x, a_w) − r(x, a_l)`` and returns a
tensor; none of them touches a module, so each can be checked against a hand computation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Balance = Literal["example", "marginal"]  # micro_rm.model.config.BALANCES


def bt_loss(delta: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood of each pair, ``−log σ(Δ)`` (same shape as ``delta``).

    >>> round(bt_loss(torch.tensor([0.0])).item(), 4)
    0.6931
    """
    return -F.logsigmoid(delta)


def mixture_bt_loss(delta: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Mixture negative log-likelihood of each pair, ``−log Σ_k π_k σ(Δ_k)`` (Eq. 2).

    ``delta`` [B, K]: each head's reward difference; ``log_weights`` [B, K]: each pair's router
    log-probabilities. Returns [B]. Computed as ``−logsumexp(log π + log σ(Δ))`` so that a pair
    every head gets badly wrong still has a finite, exact loss.

    >>> mixture_bt_loss(torch.zeros(1, 2), torch.log(torch.tensor([[0.5, 0.5]]))).round(decimals=4)
    tensor([0.6931])
    """
    return -torch.logsumexp(log_weights + F.logsigmoid(delta), dim=-1)   # [B, K] -> [B]


def negative_entropy(log_weights: torch.Tensor, balance: Balance = "example") -> torch.Tensor:
    """The router regulariser Σ_k π_k log π_k, a scalar to *minimise* (Eq. 3).

    ``log_weights`` [B, K]: the router's log-probabilities (exact π log π at π → 0). ``"example"``
    (the paper's) averages each pair's, pulling every routing toward uniform; ``"marginal"`` takes
    that of the batch-mean routing π̄, keeping every head in use while each pair may route sharply.

    >>> sharp = torch.log(torch.tensor([[0.99, 0.01], [0.01, 0.99]]))
    >>> round(negative_entropy(sharp, "example").item(), 3), round(negative_entropy(sharp, "marginal").item(), 3)
    (-0.056, -0.693)
    """
    if balance == "example":
        return torch.sum(log_weights.exp() * log_weights, dim=-1).mean()           # [B, K] -> []
    log_mean = torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])  # [K] log π̄
    return torch.sum(log_mean.exp() * log_mean)
