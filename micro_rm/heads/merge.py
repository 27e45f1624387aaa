"""Merge heads that pick the same winner on (almost) every pair (complete linkage,
:func:`micro_rm.heads.agreement.agreement_clusters`), then re-fit the router with the heads frozen.

>>> merged, info = merge_heads(model, features, min_agreement=0.9)     # doctest: +SKIP
>>> info["clusters"]                                                    # doctest: +SKIP
[[0], [1, 4], [2], [3]]
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.heads.agreement import agreement_clusters, agreement_matrix
from micro_rm.heads.profile import head_deltas
from micro_rm.model.config import MixtureConfig
from micro_rm.model.mixture import MixtureRewardModel
from micro_rm.model.router import ContextRouter, load_router, output_layer
from micro_rm.progress import progress_bar
from micro_rm.train.config import Stage1Config
from micro_rm.train.stage1 import _small_tensor_cpu, stage1_loss, validation_split


def merge_heads(model: MixtureRewardModel, features: PairFeatures, min_agreement: float = 0.9, *,
                epochs: int = 10, progress: bool = True) -> tuple[MixtureRewardModel, dict[str, Any]]:
    """The model with each group of agreeing heads merged and its router re-fitted on
    ``features`` (the training pairs), and a dict of what was done: ``clusters``, ``agreement``,
    ``validation_nll`` before and after. With no group to merge, the model is returned as is."""
    if not 0.5 <= min_agreement <= 1.0:
        raise MicroRMError(f"--min-agreement must be in [0.5, 1], got {min_agreement}")
    if model.config.variant not in ("micro", "static"):
        raise MicroRMError(f"merging re-fits routing weights, which a {model.config.variant!r} model does "
                           "not have; merge a micro or static model")
    if model.config.masked_heads:
        raise MicroRMError("the model has masked heads; merge the unmasked model, then mask the merged one")
    agreement = agreement_matrix(head_deltas(model, features))
    clusters = agreement_clusters(agreement, min_agreement)
    info: dict[str, Any] = {"min_agreement": min_agreement, "agreement": agreement.round(4).tolist(),
                            "clusters": clusters, "heads_before": model.config.num_heads,
                            "heads_after": len(clusters)}
    if len(clusters) == model.config.num_heads:
        return model, info
    usage = model.router_weights(features.route).mean(0)
    merged = _merged_model(model, clusters, usage)
    settings = {k: v for k, v in model.config.training.items() if k in Stage1Config.__dataclass_fields__}
    config = Stage1Config(**{**settings, "heads": len(clusters), "epochs": epochs})
    info["validation_nll_before"] = _refit_router(merged, features, config, progress, epochs=0)
    info["validation_nll"] = _refit_router(merged, features, config, progress, epochs=epochs)
    merged.config.training = {**model.config.training, "merge": {k: info[k] for k in ("min_agreement", "clusters")}}
    return merged.eval(), info


def duplicate_head(model: MixtureRewardModel, head: int) -> MixtureRewardModel:
    """A copy of ``model`` with head ``head`` repeated as a new last head, each copy routed half
    the original's weight: the same predictions with one redundant head (to check ``merge_heads``)."""
    if model.config.variant not in ("micro", "static") or model.config.masked_heads:
        raise MicroRMError("duplicate_head needs an unmasked micro or static model")
    k = model.config.num_heads
    bigger = MixtureRewardModel(MixtureConfig.from_dict({**model.config.to_dict(), "num_heads": k + 1,
                                                         "head_labels": []}))
    index = [*range(k), head]
    half = torch.zeros(k + 1)
    half[[head, k]] = math.log(2.0)
    with torch.no_grad():
        bigger.heads.weight.copy_(model.head_weight()[index])
        if model.config.variant == "static":
            bigger.logits.copy_(model.logits[index] - half)
            return bigger.eval()
        old = model.router
        output = output_layer(old)
        context = ((old.prototype_logits[:, index].clone(), old.null_logits[index])
                   if isinstance(old, ContextRouter) else ())
        load_router(bigger.router, old, bigger.config, (output.weight[index], output.bias[index] - half), *context)
    return bigger.eval()


def _merged_model(model: MixtureRewardModel, clusters: list[list[int]], usage: np.ndarray) -> MixtureRewardModel:
    """A model with one head per cluster: heads usage-weighted, router mass of a cluster summed."""
    config = MixtureConfig.from_dict({**model.config.to_dict(), "num_heads": len(clusters), "head_labels": [],
                                      "metrics": {}})
    merged = MixtureRewardModel(config)
    with torch.no_grad():
        weight = model.head_weight()
        for c, members in enumerate(clusters):
            share = torch.as_tensor(usage[members], dtype=weight.dtype)
            share = share / share.sum() if share.sum() > 0 else torch.full_like(share, 1 / len(members))
            merged.heads.weight[c] = share @ weight[members]
        if config.variant == "static":
            merged.logits.copy_(_sum_mass(model.logits, clusters))
            return merged
        old, context = model.router, ()
        if isinstance(old, ContextRouter):
            logits = _sum_mass(old.prototype_logits, clusters)
            # a correction multiplies a head's weight by exp(δ): a cluster's factor is the mean
            # of its members' (no change stays no change), not their sum
            logits[old.corrections] -= torch.log(torch.tensor([float(len(m)) for m in clusters], device=logits.device))
            context = (logits, _sum_mass(old.null_logits, clusters))
        # a cluster's output row is its members' mean row, its bias + log |cluster| (equal member logits sum exactly)
        output = output_layer(old)
        rows = torch.stack([output.weight[members].mean(0) for members in clusters])
        bias = torch.stack([output.bias[members].mean() + math.log(len(members)) for members in clusters])
        load_router(merged.router, old, config, (rows, bias), *context)
    return merged


def _sum_mass(logits: torch.Tensor, clusters: list[list[int]]) -> torch.Tensor:
    """Logits [..., K] → [..., C]: a cluster's logit is the logsumexp of its members' (so its
    softmax probability is their summed probability)."""
    return torch.stack([torch.logsumexp(logits[..., members], dim=-1) for members in clusters], dim=-1)


def _refit_router(model: MixtureRewardModel, features: PairFeatures, config: Stage1Config,
                  progress: bool, *, epochs: int) -> float:
    """Fit the router (heads frozen) on ``features`` with the stage-1 objective for ``epochs``,
    keeping the epoch with the lowest validation NLL; returns that NLL (``epochs=0``: just measure)."""
    train, held = validation_split(features.prompts, config.val_fraction)
    held = held if len(held) else train         # nothing held out: measure on the training pairs
    diff = torch.from_numpy(np.asarray(features.chosen, dtype=np.float32) - np.asarray(features.rejected, dtype=np.float32))
    route = torch.from_numpy(np.asarray(features.route, dtype=np.float32))
    model.heads.weight.requires_grad_(False)

    def held_nll() -> float:
        with torch.no_grad():
            return stage1_loss(model.eval(), diff[held], route[held], 0.0, config.balance).item()

    best = (held_nll(), copy.deepcopy(model.state_dict()))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)
    with _small_tensor_cpu("cpu"):          # one thread: many tiny steps (see stage 1)
        for _ in progress_bar(range(epochs), desc="re-fitting the router", unit="epoch", enabled=progress, leave=False):
            model.train()
            for batch in torch.from_numpy(train)[torch.randperm(len(train), generator=shuffle)].split(config.batch_size):
                loss = stage1_loss(model, diff[batch], route[batch], config.alpha, config.balance)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            nll = held_nll()
            if nll < best[0]:
                best = (nll, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    model.heads.weight.requires_grad_(True)
    return best[0]
