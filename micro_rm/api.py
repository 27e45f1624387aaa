"""``MiCRo``: the whole method in one object, the way ``micro-rm train`` / ``adapt`` / ``eval`` /
``score`` run it, over the library's verbs with their default configs.

>>> from micro_rm import MiCRo
>>> rm = MiCRo(heads=4, backbone="static").fit("dsp-train.jsonl")           # doctest: +SKIP
>>> rm.adapt("dsp-train.jsonl", budget=50).evaluate("dsp-test.jsonl")["mean_accuracy"]  # doctest: +SKIP
0.74
>>> rm.score("How do I sort a list?", ["Use sorted(xs).", "No."], context="I am new to Python.")  # doctest: +SKIP
[1.93, -0.88]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from micro_rm.errors import MicroRMError


class MiCRo:
    """A MiCRo reward model: K Bradley–Terry heads on a frozen backbone, routed by context.

    Parameters
    ----------
    heads : K, the number of reward heads.
    backbone : ``default``, ``static`` (fast, for a first look) or a Hugging Face model id / folder.
    router_input : ``context`` (the router reads the context and the prompt) or ``prompt``.
    context_in_reward : prepend the context to the prompt of the reward features too.
    cache_dir : feature cache folder (default: $MICRO_RM_CACHE or the user cache dir).
    device : torch device of the backbone and the training.
    **stage1 : other :class:`~micro_rm.train.Stage1Config` fields (``variant``, ``epochs``,
        ``lr``, ``alpha``, ``balance``, ``seed`` ...).

    Attributes (after ``fit``, ``adapt`` or ``load``): ``model_`` (the
    :class:`~micro_rm.model.MixtureRewardModel`), ``history_`` (stage 1) and ``adapt_info_``.
    """

    def __init__(self, heads: int = 4, backbone: str = "default", *, router_input: str = "context",
                 context_in_reward: bool = False, cache_dir: Optional[str | os.PathLike] = None,
                 device: str = "cpu", **stage1: Any):
        self.heads = heads
        self.backbone = backbone
        self.router_input = router_input
        self.context_in_reward = context_in_reward
        self.cache_dir = cache_dir
        self.device = device
        self.stage1 = stage1

    def fit(self, data: Any, *, hf_split: Optional[str] = None, progress: bool = True) -> "MiCRo":
        """Stage 1 on pair records: a file, folder or hub id, a ``datasets.Dataset`` or a list of
        records (see :func:`~micro_rm.data.readers.read_pairs`)."""
        from micro_rm.features.backbones import load_backbone
        from micro_rm.features.cache import FeatureCache
        from micro_rm.features.featurize import featurize
        from micro_rm.train import Stage1Config, fit_stage1

        config = Stage1Config(heads=self.heads, device=self.device, **self.stage1)
        records = _records(data, hf_split)
        backbone = load_backbone(self.backbone, device=self.device)
        features, _ = featurize(records, backbone, FeatureCache(self.cache_dir), router_input=self.router_input,
                                context_in_reward=self.context_in_reward, progress=progress)
        model, self.history_ = fit_stage1(features, config, progress=progress)  # records the feature settings
        model.config.data = {"source": _source_name(data), "pairs": len(records),
                             "attributes": sorted({a for a in features.attributes if a is not None})}
        self._set_model(model)
        return self

    def adapt(self, data: Any, *, budget: int = 50, tau: float | str = "auto", folds: int = 5, seed: int = 0,
              hf_split: Optional[str] = None, progress: bool = True) -> "MiCRo":
        """Stage 2: adapt the router from ``budget`` context pairs per attribute of ``data``
        (records with a ``context``), the stage-1 router kept unless cross-validation shows that
        adapting helps; see :class:`~micro_rm.train.AdaptConfig` and
        :func:`~micro_rm.train.adapt.adapt_from_records`."""
        from micro_rm.train.adapt import adapt_from_records
        from micro_rm.train.config import AdaptConfig

        config = AdaptConfig(budget=budget, tau=tau, folds=folds, seed=seed)
        adapted, self.adapt_info_ = adapt_from_records(self._fitted(), _records(data, hf_split), config,
                                                       cache_dir=self.cache_dir, progress=progress,
                                                       device=self.device)
        adapted.config.data = {**adapted.config.data, "stage2_source": _source_name(data)}
        self._set_model(adapted)
        return self

    def evaluate(self, data: Any, *, hf_split: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
        """Routed pairwise accuracy per attribute and its mean (``micro-rm eval``'s headline)."""
        from micro_rm.eval.metrics import pairwise_accuracy
        from micro_rm.model.text import featurize_for

        model = self._fitted()
        features = featurize_for(model, _records(data, hf_split), self.cache_dir, progress=progress)
        return pairwise_accuracy(model.predict_proba(features.chosen, features.rejected, features.route),
                                 features.attributes)

    def score(self, prompt: Any, responses: Sequence[Any], *, context: Optional[str] = None) -> list[float]:
        """The routed reward Σ_k w_k r_k of each response to ``prompt`` (strings or chat messages)."""
        out = self._reward().routed([prompt] * len(responses), list(responses), [context] * len(responses))
        return out.rewards.tolist()

    def compare(self, prompt: Any, a: Any, b: Any, *, context: Optional[str] = None) -> float:
        """P(a ≻ b) = Σ_k w_k σ(r_k(a) − r_k(b)): the mixture's probability, which ranks two
        responses correctly even when no single head dominates (unlike comparing scores)."""
        import numpy as np

        out = self._reward().routed([prompt, prompt], [a, b], [context, context])
        margin = out.head_rewards[0] - out.head_rewards[1]
        return float(out.weights[0] @ (1.0 / (1.0 + np.exp(-margin))))

    def suggest(self, user: Optional[str], pairs: Sequence[Any], k: int = 1, *, state: Any = None,
                eta: Optional[float] = None) -> list[Any]:
        """The ``k`` candidate pairs whose labels would teach most about ``user``, best first:
        :func:`micro_rm.scoring.suggest.suggest` with this model (``state`` is read only).

        >>> [q.index for q in rm.suggest("ana", pool, k=2, state="state.db")]   # doctest: +SKIP
        [17, 3]
        """
        from micro_rm.scoring.suggest import suggest

        return suggest(self._reward(), pairs, k, user=user, state=state, eta=eta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model folder (config.json, model.safetensors, README.md model card)."""
        return self._fitted().save_pretrained(path)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the model folder to the Hugging Face Hub (see :func:`micro_rm.model.hub.push_to_hub`)."""
        return self._fitted().push_to_hub(repo_id, **kwargs)

    @classmethod
    def load(cls, path_or_hub_id: str | os.PathLike, *, revision: Optional[str] = None,
             token: Optional[str | bool] = None, device: str = "cpu",
             cache_dir: Optional[str | os.PathLike] = None) -> "MiCRo":
        """A saved model (folder or Hub id, at ``revision``), ready to score, evaluate or adapt."""
        from micro_rm.model.mixture import MixtureRewardModel

        model = MixtureRewardModel.from_pretrained(str(path_or_hub_id), device=device, revision=revision,
                                                   token=token)
        settings = model.config.feature_settings()
        spec = (model.config.backbone or {}).get("spec") or {}
        rm = cls(heads=model.config.num_heads, backbone=spec.get("name", "unknown"), router_input=settings.router_input,
                 context_in_reward=settings.context_in_reward, cache_dir=cache_dir, device=device)
        rm._set_model(model)
        return rm

    def _set_model(self, model: Any) -> None:
        self.model_ = model
        self._reward_fn = None

    def _fitted(self) -> Any:
        model = getattr(self, "model_", None)
        if model is None:
            raise MicroRMError("this MiCRo has no model yet: call fit(data) first, or MiCRo.load(path)")
        return model

    def _reward(self) -> Any:
        """The scoring engine (backbone rebuilt from the model's config), made on first use."""
        if getattr(self, "_reward_fn", None) is None:
            from micro_rm.scoring.engine import RewardEngine

            self._reward_fn = RewardEngine(self._fitted(), cache_dir=self.cache_dir, device=self.device)
        return self._reward_fn

    def __repr__(self) -> str:
        state = "fitted" if getattr(self, "model_", None) is not None else "not fitted"
        return f"MiCRo(heads={self.heads}, backbone={self.backbone!r}, {state})"


def _records(data: Any, hf_split: Optional[str]) -> list[dict[str, Any]]:
    """Validated pair records from a source (file, folder, hub id, Dataset) or a list of dicts."""
    from micro_rm.data.readers import read_pairs
    from micro_rm.data.records import normalize_pair

    if isinstance(data, (list, tuple)):
        if not data:
            raise MicroRMError("no pair records")
        return [normalize_pair(r, f"record {i}") for i, r in enumerate(data)]
    return read_pairs(data, hf_split=hf_split)


def _source_name(data: Any) -> str:
    return str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
