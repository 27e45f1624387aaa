"""The MiCRo model: K linear Bradley–Terry heads on frozen features and a router (METHOD.md Eq. 1).

    P(a_w ≻ a_l | x) = Σ_k π_k(x) · σ(r_k(x, a_w) − r_k(x, a_l))

One class serves the method and its baselines; ``variant`` says where π comes from: ``micro``
a router f_ψ over the route features, ``static`` a softmax of K free logits (MaxMin-RLHF),
``single`` one head (plain BT), ``shared-base`` uniform 1/K over heads that each add a frozen
random prior (HyRe's ensemble). Heads have no bias: it cancels in r(a_w) − r(a_l).

>>> model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=3, route_dim=4))
>>> model.predict_proba(np.zeros((5, 3)), np.zeros((5, 3)), np.zeros((5, 4))).round(2).tolist()
[0.5, 0.5, 0.5, 0.5, 0.5]
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from micro_rm.errors import MicroRMError
from micro_rm.features.backbones import fingerprint_differences
from micro_rm.model.config import MixtureConfig
from micro_rm.model.losses import mixture_bt_loss
from micro_rm.model.pretrained import PretrainedMixin
from micro_rm.model.router import ContextRouter, router_network

INFERENCE_CHUNK = 65_536  # rows per forward pass at inference (bounded memory on memory-mapped features)
MASKED_LOGIT = -1e9       # router logit of a masked head (config.masked_heads)


class MixtureRewardModel(nn.Module, PretrainedMixin):
    """K Bradley–Terry heads and a router; see the module docstring for the variants.

    Tensor methods keep gradients and are what training uses. Array methods (``predict_proba``,
    ``head_probs``, ``router_weights``, ``rewards``, ``score``) accept numpy arrays (memory-mapped
    float16 is fine), check dimensions and return float32 arrays. The folder verbs come from
    :class:`~micro_rm.model.pretrained.PretrainedMixin`.
    """

    def __init__(self, config: MixtureConfig):
        super().__init__()
        self.config = config
        k, d = config.num_heads, config.reward_dim
        self.heads = nn.Linear(d, k, bias=False)                # [K, d]
        if config.variant == "shared-base":
            prior = nn.Linear(d, k, bias=False).weight.detach() * config.prior_scale
            self.register_buffer("prior", prior)                # frozen, saved with the weights
        if config.variant == "micro":
            self.router = ContextRouter(config) if config.context_dim else router_network(config.route_dim, k, config)
        if config.variant == "static":
            self.logits = nn.Parameter(torch.zeros(k))

    # ----- tensors (differentiable) -------------------------------------------------------------
    def head_weight(self) -> torch.Tensor:
        """The effective head matrix [K, d] (trainable + frozen prior for ``shared-base``)."""
        return self.heads.weight + self.prior if self.config.variant == "shared-base" else self.heads.weight

    def head_rewards(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head rewards r_k of responses: [N, d] → [N, K]. Of feature differences chosen − rejected,
        the reward differences Δ_k (heads are linear without bias: r_k(a_w) − r_k(a_l) = r_k(a_w − a_l))."""
        return F.linear(x, self.head_weight())

    def router_log_weights(self, route: torch.Tensor) -> torch.Tensor:
        """log π_k(x) of each pair: [N, d_r] → [N, K]. Each row is routed by its own features;
        masked heads (``config.masked_heads``) get weight 0 and the rest renormalise."""
        n, k = route.shape[0], self.config.num_heads
        if self.config.variant == "micro":
            logits = self.router(route)
        elif self.config.variant == "static":
            logits = self.logits.expand(n, k)
        else:
            logits = route.new_zeros((n, k))                    # single, shared-base: uniform
        return F.log_softmax(self.mask_logits(logits), dim=-1)

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [N, K] with the masked heads' (``config.masked_heads``) set to
        ``MASKED_LOGIT``. Finite, not −inf: π = exp(−1e9) is exactly 0, yet π·log π and the
        stage-2 cross-entropy stay 0 instead of NaN, and no gradient reaches the masked logits."""
        if not self.config.masked_heads:
            return logits
        return logits.index_fill(-1, torch.tensor(self.config.masked_heads, device=logits.device), MASKED_LOGIT)

    @torch.no_grad()
    def context_branch_inputs(self, route: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """:meth:`ContextRouter.context_branch_inputs` with the masked heads' fixed logits at
        ``MASKED_LOGIT``, so that stage 2's fits and cross-validation renormalise over the heads
        that may be routed, as :meth:`router_log_weights` does."""
        fixed, attention, known = self.router.context_branch_inputs(route)
        return self.mask_logits(fixed), attention, known

    def log_likelihood(self, diff: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """log P(a_w ≻ a_l | x) of each pair: [N, d], [N, d_r] → [N]."""
        return -mixture_bt_loss(self.head_rewards(diff), self.router_log_weights(route))

    # ----- arrays (inference) -------------------------------------------------------------------
    def predict_proba(self, chosen, rejected, route) -> np.ndarray:
        """Routed mixture probability Σ_k π_k(x) σ(Δ_k) that ``chosen`` beats ``rejected``: [N]."""
        return self._map_rows(lambda c, r, u: self.log_likelihood(c - r, u).exp(),
                              chosen=chosen, rejected=rejected, route=route)

    def head_probs(self, chosen, rejected) -> np.ndarray:
        """Each head's own probability σ(Δ_k) that ``chosen`` wins: [N, K]."""
        return self._map_rows(lambda c, r: torch.sigmoid(self.head_rewards(c - r)), chosen=chosen, rejected=rejected)

    def router_weights(self, route) -> np.ndarray:
        """The router's weights π(x) over heads: [N, K], rows sum to 1."""
        return self._map_rows(lambda u: self.router_log_weights(u).exp(), route=route)

    def rewards(self, x) -> np.ndarray:
        """Per-head rewards of responses (reward features [N, d]): [N, K]."""
        return self._map_rows(self.head_rewards, x=x)

    def score(self, x, route) -> np.ndarray:
        """Scalar personalised reward Σ_k π_k(x) r_k(x, a) of each response: [N]. It ranks like
        the mixture probability only when one head dominates π(x); to compare two, use ``predict_proba``."""
        return self._map_rows(lambda a, u: (self.router_log_weights(u).exp() * self.head_rewards(a)).sum(-1),
                              x=x, route=route)

    @torch.no_grad()
    def frozen_deltas(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        """The head deltas Δ [N, K] of all pairs of ``features`` (no gradient: for fits that hold the
        heads fixed) and their route features [N, d_r], as float32 tensors on the model's device."""
        device = self.heads.weight.device
        diff = torch.as_tensor(np.subtract(features.chosen, features.rejected, dtype=np.float32), device=device)
        return self.head_rewards(diff), torch.as_tensor(np.asarray(features.route, dtype=np.float32), device=device)

    def check_features(self, features) -> None:
        """Refuse features made by another backbone or of the wrong width (``PairFeatures``)."""
        self._check(features.chosen, "features.chosen", self.config.reward_dim)
        self._check(features.route, "features.route", self.config.route_dim)
        if features.context_encoding != self.config.context_encoding:
            raise MicroRMError(f"features use the route layout {features.context_encoding!r} but the model reads "
                               f"{self.config.context_encoding!r}; re-featurize the data with "
                               f"--context-encoding {self.config.context_encoding}")
        mine, theirs = self.config.backbone, features.fingerprint
        if fingerprint_differences(mine, theirs):
            raise MicroRMError("features were made by a different backbone than the model's "
                               f"(features: {theirs.get('name', theirs)}, model: {mine.get('name', mine)}); "
                               "re-featurize the data with the model's backbone")

    def _check(self, array, name: str, dim: int) -> None:
        shape = tuple(array.shape)
        if len(shape) != 2 or shape[1] != dim:
            raise MicroRMError(f"`{name}` has shape {shape}, but the model expects [N, {dim}] "
                               f"(features / model dimension mismatch: was the model trained on "
                               f"another backbone?)")

    @torch.inference_mode()
    def _map_rows(self, fn: Callable[..., torch.Tensor], **arrays) -> np.ndarray:
        """``fn`` over row chunks of ``arrays``, cast to float32 per chunk (memory-mapped safe), after
        checking each array's width: [N, d_r] for ``route``, [N, d] for the reward features."""
        for name, array in arrays.items():
            self._check(array, name, self.config.route_dim if name == "route" else self.config.reward_dim)
        device, inputs = self.heads.weight.device, list(arrays.values())
        out = [fn(*(torch.as_tensor(np.asarray(a[i:i + INFERENCE_CHUNK], dtype=np.float32), device=device)
                    for a in inputs)).cpu().numpy()
               for i in range(0, max(len(inputs[0]), 1), INFERENCE_CHUNK)]
        return np.concatenate(out)
