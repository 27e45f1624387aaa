"""The router f_ψ: the prompt network, and the context branch's prototypes, corrections and their
logits. Every write to that state goes through a method here, so the router's tensors and the
config's ``context_prototypes`` / ``context_corrections`` never disagree.

>>> router = ContextRouter(MixtureConfig(num_heads=2, reward_dim=3, route_dim=5, context_dim=3))
>>> router.add_prototypes(torch.eye(3)[:2], MixtureConfig(num_heads=2, reward_dim=3, route_dim=5, context_dim=3))
2
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from micro_rm.model.config import MixtureConfig

SAME_CONTEXT = 1 - 1e-6   # cosine above which a context is a prototype it equals


def router_network(inputs: int, k: int, config: MixtureConfig) -> nn.Module:
    """``mlp``: inputs → hidden → K with ReLU (the paper's); ``linear``: inputs → K."""
    if config.router == "mlp":
        return nn.Sequential(nn.Linear(inputs, config.router_hidden), nn.ReLU(),
                             nn.Linear(config.router_hidden, k))
    return nn.Linear(inputs, k)


class ContextRouter(nn.Module):
    """Router logits = g(emb(prompt)) + h(emb(context)) over the "separate" route layout
    [emb(prompt); emb(context)], where h attends over fixed unit prototype contexts u_m:

        h(c) = Σ_m softmax_m( cos(c, u_m) / T ) · a_m          (a zero c, "no context": h = a_null)

    Only a_m, a_null and g are learned. Stage 2 adds its budget's contexts as plain prototypes or
    as *corrections* (``config.context_corrections``), whose logits δ_n, starting at 0, are added
    by the share of the softmax over all prototypes (att) they would get:

        h(c) = Σ_{m plain} softmax_{m plain}( cos(c, u_m) / T ) · a_m + Σ_{n corr} att_n(c) · δ_n

    Why attention, and why corrections: docs/personalization.md §2 and §4.
    """

    def __init__(self, config: MixtureConfig):
        super().__init__()
        k, m = config.num_heads, config.context_prototypes
        self.context_dim, self.temperature = config.context_dim, config.context_temperature
        self.prompt = router_network(config.route_dim - config.context_dim, k, config)
        self.register_buffer("prototypes", torch.zeros(m, config.context_dim))   # [M, d_c], unit rows
        self.prototype_logits = nn.Parameter(torch.zeros(m, k))                   # [M, K]
        self.null_logits = nn.Parameter(torch.zeros(k))                          # [K]
        corrections = torch.zeros(m, dtype=torch.bool)
        corrections[config.context_corrections] = True
        self.register_buffer("corrections", corrections, persistent=False)      # [M], from the config

    def attention(self, context: torch.Tensor) -> torch.Tensor:
        """The weight each prototype's logits get in h(c), [N, d_c] → [N, M]: softmax_m(cos(c, u_m) / T)
        over the plain prototypes, and a correction's share of that softmax over all of them."""
        norm = context.norm(dim=-1, keepdim=True)
        similarity = context / norm.clamp_min(1e-12) @ self.prototypes.T / self.temperature
        everyone = torch.softmax(similarity, -1)
        if not bool(self.corrections.any()):
            return everyone
        plain = torch.softmax(similarity.masked_fill(self.corrections, -math.inf), -1)
        return torch.where(self.corrections, everyone, plain)

    def context_logits(self, context: torch.Tensor) -> torch.Tensor:
        """h(c): [N, d_c] → [N, K]."""
        null = self.null_logits.expand(len(context), -1)
        if len(self.prototypes) == 0:
            return null
        known = context.norm(dim=-1, keepdim=True) > 0                           # [N, 1]
        return torch.where(known, self.attention(context) @ self.prototype_logits, null)

    def forward(self, route: torch.Tensor) -> torch.Tensor:
        """[N, d_p + d_c] → logits [N, K]."""
        prompt, context = route.split([route.shape[-1] - self.context_dim, self.context_dim], dim=-1)
        return self.prompt(prompt) + self.context_logits(context)

    @torch.no_grad()
    def context_branch_inputs(self, route: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """What the logits of ``route`` [N, d_r] need besides the context branch's parameters (which
        are all stage 2 changes): the prompt branch's logits [N, K], the attention [N, M] (None
        without prototypes) and which rows have a context [N, 1]."""
        prompt, context = route.split([route.shape[-1] - self.context_dim, self.context_dim], dim=-1)
        attention = self.attention(context) if len(self.prototypes) else None
        return self.prompt(prompt), attention, context.norm(dim=-1, keepdim=True) > 0

    def unseen_contexts(self, route: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which prototypes equal one of ``route``'s contexts (bool [M]), and the contexts (unit
        vectors, one per row that has a context) that equal none of them."""
        context = route[:, -self.context_dim:]
        unit = F.normalize(context[context.norm(dim=-1) > 0], dim=-1)
        if not len(self.prototypes) or not len(unit):
            return torch.zeros(len(self.prototypes), dtype=torch.bool, device=route.device), unit
        similarity = unit @ self.prototypes.T                                              # [n, M]
        return (similarity > SAME_CONTEXT).any(dim=0), unit[similarity.max(dim=-1).values <= SAME_CONTEXT]

    # ----- the only writers of the context branch's state ---------------------------------------
    @torch.no_grad()
    def add_prototypes(self, contexts: torch.Tensor, config: MixtureConfig, corrections: bool = False) -> int:
        """Append the contexts [n, d_c] that are not prototypes yet, as plain prototypes whose
        logits start at the current h(c), or as ``corrections`` starting at δ = 0 (so routing
        does not move), and record them in ``config``. Returns how many were added."""
        unit = F.normalize(contexts[contexts.norm(dim=-1) > 0], dim=-1)
        if len(self.prototypes):
            unit = unit[(unit @ self.prototypes.T).max(-1).values < SAME_CONTEXT]
        unit = unique_rows(unit)
        if len(unit) == 0:
            return 0
        if corrections and bool(self.corrections.all()):
            raise ValueError("a correction needs a plain prototype to correct; this router has none")
        start = torch.zeros(len(unit), self.prototype_logits.shape[1]) if corrections else self.context_logits(unit)
        self.prototypes = torch.cat([self.prototypes, unit])
        self.prototype_logits = nn.Parameter(torch.cat([self.prototype_logits.detach(), start.to(unit)]))
        self.corrections = torch.cat([self.corrections, torch.full((len(unit),), corrections, device=unit.device)])
        self._record(config)
        return len(unit)

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Place stage 1's training contexts [M, d_c] (unit vectors) in the slots the config sized."""
        self.prototypes.copy_(prototypes)

    @torch.no_grad()
    def set_context_logits(self, prototype_logits: torch.Tensor, null_logits: Optional[torch.Tensor] = None) -> None:
        """Overwrite the prototypes' logits [M, K] (and the no-context logits [K], if given): a
        stage-2 step."""
        self.prototype_logits.copy_(prototype_logits)
        if null_logits is not None:
            self.null_logits.copy_(null_logits)

    @torch.no_grad()
    def set_context_branch(self, prototypes: torch.Tensor, prototype_logits: torch.Tensor,
                           null_logits: torch.Tensor, config: MixtureConfig) -> None:
        """Replace the prototypes [M, d_c] and their logits [M, K] (K may differ from this
        router's, as when heads merge), keeping which of them are corrections."""
        self.prototypes = prototypes
        self.prototype_logits = nn.Parameter(prototype_logits)
        self.null_logits.copy_(null_logits)
        self._record(config)

    def _record(self, config: MixtureConfig) -> None:
        config.context_prototypes = len(self.prototypes)
        config.context_corrections = self.corrections.nonzero()[:, 0].tolist()


@torch.no_grad()
def load_router(new: nn.Module, old: nn.Module, config: MixtureConfig, output: tuple[torch.Tensor, torch.Tensor],
                prototype_logits: Optional[torch.Tensor] = None, null_logits: Optional[torch.Tensor] = None) -> None:
    """Write the router ``new`` (of ``config``, with another number of heads) from ``old``: the
    prompt network but its last layer, which gets ``output`` (weight, bias), and for a
    :class:`ContextRouter` old's prototypes with the given logits (heads merge, duplicate_head)."""
    if isinstance(old, ContextRouter):
        new.set_context_branch(old.prototypes.clone(), prototype_logits, null_logits, config)
        old, new = old.prompt, new.prompt
    if isinstance(old, nn.Sequential):                                   # all but the output layer
        new[:-1].load_state_dict(old[:-1].state_dict())
    output_layer(new).weight.copy_(output[0])
    output_layer(new).bias.copy_(output[1])


def output_layer(router: nn.Module) -> nn.Linear:
    """The last linear layer of a router's prompt network (whose rows are the heads)."""
    network = router.prompt if isinstance(router, ContextRouter) else router
    return network[-1] if isinstance(network, nn.Sequential) else network


def unique_rows(vectors: torch.Tensor) -> torch.Tensor:
    """The distinct rows of ``vectors`` [n, d], in order of first appearance."""
    if len(vectors) == 0:
        return vectors
    _, inverse = torch.unique(vectors, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(vectors), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(vectors)), reduce="amin")
    return vectors[first.sort().values]


def context_branch_logits(inputs: tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor],
                          prototype_logits: torch.Tensor, null_logits: torch.Tensor) -> torch.Tensor:
    """Router logits from :meth:`ContextRouter.context_branch_inputs` and context-branch
    parameters for C candidates at once: ``prototype_logits`` [C, M, K], ``null_logits`` [C, K]
    → [C, N, K]."""
    fixed, attention, known = inputs
    null = null_logits[:, None, :].expand(-1, len(fixed), -1)
    if attention is None:
        return fixed + null
    return fixed + torch.where(known, attention @ prototype_logits, null)
