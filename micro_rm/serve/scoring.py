"""Scoring for the service and the TRL adapter: features (in-memory LRU → feature cache →
backbone, micro-batched across requests) and the routed mixture math.

The math is the same for every caller: a response's reward for a user is

    r(x, a) = Σ_k w_k r_k(x, a),   w = normalise( f_ψ(context ⊕ prompt) ⊙ exp(−η S_u) )

(the router's weights are the prior, S_u the user's summed per-head losses; without a user, w is
the router's). ``/score``, ``/get_reward`` and :class:`micro_rm.integrations.trl.MicroRMRewardFunction`
all go through :meth:`RewardScorer.routed`, so they return the same numbers.

>>> scorer = RewardScorer.load("runs/dsp")                                        # doctest: +SKIP
>>> out = scorer.routed(*scorer.vectors_for_score("Hi", ["Hello!", "Go away."]))   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.data.records import Text
from micro_rm.features.base import Backbone, Item
from micro_rm.online.hedge import DEFAULT_ETA, DEFAULT_P_MIN, hedge_log_weights, pair_losses
from micro_rm.serve.worker import QueueWorker


def model_state_id(model: Any) -> str:
    """The id the per-user state store is keyed on (the one ``micro-rm feedback`` uses, so the
    service and the CLI share a state file): backbone fingerprint, K and a hash of the heads.
    Users' losses depend only on the heads, so a router re-adapted at stage 2 keeps its users."""
    from micro_rm.online.identity import state_model_id

    return state_model_id(model)


# ----- features -----------------------------------------------------------------------------
class FeatureStore:
    """Vectors of items: an in-memory LRU in front of the on-disk :class:`FeatureCache`, in
    front of the backbone. Thread-safe; the backbone runs one batch at a time."""

    def __init__(self, backbone: Backbone, cache: Any = None, *, lru_items: int = 100_000,
                 batch_size: int = 32):
        self.backbone = backbone
        self.cache = cache                      # a FeatureCache, or None for LRU only
        self.lru_items = lru_items
        self.batch_size = batch_size
        self._lru: OrderedDict[Item, np.ndarray] = OrderedDict()
        self._lru_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self.stats = {"lru_hits": 0, "lru_misses": 0, "encoded": 0, "from_disk_cache": 0,
                      "encode_calls": 0, "encode_seconds": 0.0}

    def lookup(self, items: Sequence[Item]) -> tuple[np.ndarray, list[int]]:
        """``(vectors [n, dim], indices not in memory)``; missing rows are zero."""
        out = np.zeros((len(items), self.backbone.dim), dtype=np.float32)
        missing = []
        with self._lru_lock:
            for i, item in enumerate(items):
                vector = self._lru.get(item)
                if vector is None:
                    missing.append(i)
                else:
                    self._lru.move_to_end(item)
                    out[i] = vector
            self.stats["lru_hits"] += len(items) - len(missing)
            self.stats["lru_misses"] += len(missing)
        return out, missing

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors of ``items`` from the disk cache or the backbone (not the LRU); fills the LRU."""
        unique = list(dict.fromkeys(items))
        start = time.perf_counter()
        with self._encode_lock:
            if self.cache is not None:
                vectors, stats = self.cache.get_or_encode(unique, self.backbone,
                                                          batch_size=self.batch_size, progress=False)
                encoded, from_disk = stats.encoded, stats.from_cache
            else:
                vectors = np.concatenate([np.asarray(self.backbone.encode(unique[i:i + self.batch_size]),
                                                     dtype=np.float32)
                                          for i in range(0, len(unique), self.batch_size)])
                encoded, from_disk = len(unique), 0
        with self._lru_lock:
            self.stats["encoded"] += encoded
            self.stats["from_disk_cache"] += from_disk
            self.stats["encode_calls"] += 1
            self.stats["encode_seconds"] += time.perf_counter() - start
            if self.lru_items:
                for item, vector in zip(unique, vectors):
                    self._lru[item] = vector
                    self._lru.move_to_end(item)
                while len(self._lru) > self.lru_items:
                    self._lru.popitem(last=False)
        position = {item: i for i, item in enumerate(unique)}
        return vectors[[position[item] for item in items]]

    def vectors(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors of ``items`` [n, dim], encoding only what no cache holds (synchronous)."""
        out, missing = self.lookup(items)
        if missing:
            out[missing] = self.encode([items[i] for i in missing])
        return out


class MicroBatcher(QueueWorker):
    """Gathers the uncached items of concurrent requests into one backbone call.

    The first waiting request opens a batch; the batch closes after ``wait_ms`` or once it holds
    ``max_items`` items, and runs in a worker thread while the next batch gathers. Items already
    in memory never wait.
    """

    def __init__(self, features: FeatureStore, *, wait_ms: float = 2.0, max_items: int = 256):
        super().__init__(thread_name="micro-rm-encode")
        self.features = features
        self.wait = wait_ms / 1000.0
        self.max_items = max_items
        self.stats = {"batches": 0, "batch_items": 0, "batch_requests": 0}

    async def vectors(self, items: Sequence[Item]) -> np.ndarray:
        out, missing = self.features.lookup(items)
        if missing:
            if self._queue is None:  # not started (no running lifespan): encode inline
                out[missing] = self.features.encode([items[i] for i in missing])
                return out
            out[missing] = await self._submit([items[i] for i in missing])
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.wait
            while size < self.max_items:
                try:
                    if self._queue.empty():
                        timeout = deadline - loop.time()
                        if timeout <= 0:
                            break
                        request = await asyncio.wait_for(self._queue.get(), timeout)
                    else:
                        request = self._queue.get_nowait()
                except asyncio.TimeoutError:
                    break
                batch.append(request)
                size += len(request[0])
            items = [item for request_items, _ in batch for item in request_items]
            # An encoding error is handed to every waiting request, which answers 500/503.
            if await self._settle(batch, self.features.encode, items):
                self.stats["batches"] += 1
                self.stats["batch_items"] += len(items)
                self.stats["batch_requests"] += len(batch)


# ----- the routed mixture -------------------------------------------------------------------
@dataclass
class Routed:
    """Rewards of N responses under per-response weights."""

    rewards: np.ndarray        # [N]    Σ_k w_k r_k
    head_rewards: np.ndarray   # [N, K] r_k
    weights: np.ndarray        # [N, K] w used (router prior ⊙ Hedge, normalised)
    prior: np.ndarray          # [N, K] the router's weights alone


class RewardScorer:
    """A loaded model with its backbone: builds items the way the model was trained, and
    computes routed rewards, comparisons and feedback losses from vectors."""

    def __init__(self, model: Any, backbone: Backbone):
        self.model = model
        self.backbone = backbone
        settings = model.config.feature
        self.router_input = settings.get("router_input", "context")
        self.context_in_reward = bool(settings.get("context_in_reward", False))
        self.model_id = model_state_id(model)
        self.num_heads = model.config.num_heads

    @classmethod
    def load(cls, model_dir_or_model: Any, device: str = "cpu") -> "RewardScorer":
        """From a model folder (or hub id) or a :class:`MixtureRewardModel`; rebuilds its backbone."""
        from micro_rm.model.mixture import MixtureRewardModel
        from micro_rm.model.text import model_backbone

        model = model_dir_or_model
        if not isinstance(model, MixtureRewardModel):
            model = MixtureRewardModel.from_pretrained(str(model_dir_or_model), device=device)
        return cls(model.eval(), model_backbone(model, device=device))

    # items --------------------------------------------------------------------------------
    def reward_item(self, prompt: Text, response: Text, context: Optional[str]) -> Item:
        return self.backbone.reward_item(prompt, response, context if self.context_in_reward else None)

    def route_items(self, prompt: Text, context: Optional[str]) -> list[Item]:
        """The router's items of one prompt (see micro_rm.features.featurize.route_items);
        turn their vectors into route features with :meth:`route_features`."""
        from micro_rm.features.featurize import route_items

        return route_items(self.backbone, prompt, self._context(context),
                           context_encoding=self.model.config.context_encoding)

    def route_features(self, vectors: np.ndarray, contexts: Sequence[Optional[str]]) -> np.ndarray:
        """Route features [N, d_r] from the vectors of N prompts' :meth:`route_items`."""
        from micro_rm.features.featurize import route_matrix

        return route_matrix(vectors, [self._context(c) for c in contexts], self.model.config.context_dim,
                            self.model.config.context_encoding)

    def _context(self, context: Optional[str]) -> Optional[str]:
        return context if self.router_input == "context" else None

    # math on vectors -----------------------------------------------------------------------
    def routed(self, reward_vectors: np.ndarray, route_vectors: np.ndarray,
               cumulative_loss: Optional[np.ndarray] = None, eta: float = DEFAULT_ETA) -> Routed:
        """Rewards of N responses: ``reward_vectors`` [N, d], ``route_vectors`` [N, d_r] (or
        [1, d_r], shared), ``cumulative_loss`` None (router only), [K] or [N, K] (each row's user)."""
        import torch

        head_rewards = self.model.rewards(reward_vectors).astype(np.float64)              # [N, K]
        with torch.inference_mode():
            route = torch.as_tensor(np.asarray(route_vectors, dtype=np.float32),
                                    device=self.model.heads.weight.device)
            log_prior = self.model.router_log_weights(route).double().cpu().numpy()         # [B, K]
        log_prior = np.broadcast_to(log_prior, head_rewards.shape)
        log_w = log_prior if cumulative_loss is None else hedge_log_weights(log_prior, cumulative_loss, eta)
        weights = np.exp(log_w)
        return Routed(rewards=(weights * head_rewards).sum(-1), head_rewards=head_rewards,
                      weights=weights, prior=np.exp(log_prior))

    def head_probs(self, a_vectors: np.ndarray, b_vectors: np.ndarray) -> np.ndarray:
        """σ(r_k(a) − r_k(b)) per pair and head: [N, K] float64."""
        return self.model.head_probs(a_vectors, b_vectors).astype(np.float64)

    def feedback_losses(self, chosen_vectors: np.ndarray, rejected_vectors: np.ndarray,
                        p_min: float = DEFAULT_P_MIN) -> np.ndarray:
        """Each head's scaled loss on pairs labelled chosen ≻ rejected: [N, K] in [0, 1]."""
        return pair_losses(self.head_probs(chosen_vectors, rejected_vectors), p_min)
