"""From pair records to a saved model's features: the backbone its config names, through the cache.

A model folder records its backbone fingerprint (whose ``spec`` rebuilds the backbone) and its
feature settings, so scoring new data needs no flags that could disagree with training.

>>> model = MixtureRewardModel.from_pretrained("runs/dsp")              # doctest: +SKIP
>>> features = featurize_for(model, read_pairs("dsp-test.jsonl"))        # doctest: +SKIP
>>> model.predict_proba(features.chosen, features.rejected, features.route)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict
from typing import Any, Optional, Sequence

from micro_rm.errors import MicroRMError
from micro_rm.features.base import Backbone, PairFeatures
from micro_rm.model.mixture import MixtureRewardModel


def model_backbone(model: MixtureRewardModel, device: str = "cpu") -> Backbone:
    """Rebuild the backbone of ``model`` from its fingerprint's ``spec`` (every recorded setting:
    name, max_length, dtype, pooling) and check that it makes the same vectors: the rebuilt
    fingerprint (weights hash or revision, chat template, truncation …) must match the recorded one."""
    from micro_rm.features.backbones import fingerprint_differences, load_backbone

    recorded = model.config.backbone
    if not isinstance(recorded.get("spec"), dict):
        raise MicroRMError("the model's config.json has no backbone spec (`backbone.spec`), so its "
                           "backbone cannot be rebuilt; featurize the data yourself and call "
                           "predict_proba on the features")
    unknown = sorted(set(recorded["spec"]) - set(inspect.signature(load_backbone).parameters) - {"device"})
    if unknown:
        raise MicroRMError(f"the model's config.json has unknown backbone setting(s) {', '.join(map(repr, unknown))} "
                           "in `backbone.spec`; was it written by a newer micro-rm?")
    backbone = load_backbone(**{**recorded["spec"], "device": device})
    differ = fingerprint_differences(recorded, backbone.fingerprint())
    if differ:
        raise MicroRMError(f"the backbone rebuilt from the model's config differs from the one it was "
                           f"trained on (fields: {', '.join(differ)}); install the same backbone "
                           "weights, or retrain")
    return backbone


def featurize_for(model: MixtureRewardModel, records: Sequence[dict[str, Any]],
                  cache_dir: Optional[str | os.PathLike] = None, *, allow_encode: bool = True,
                  progress: bool = True, device: str = "cpu") -> PairFeatures:
    """Features of ``records`` as ``model`` was trained to read them: its backbone (fingerprint
    checked) and every feature setting its config recorded (router input, context in reward, route
    layout; :meth:`~micro_rm.model.config.MixtureConfig.feature_settings`), from the feature cache
    at ``cache_dir``, encoding what is missing unless ``allow_encode`` is false."""
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize

    features, _ = featurize(records, model_backbone(model, device=device), FeatureCache(cache_dir),
                            **asdict(model.config.feature_settings()), progress=progress,
                            allow_encode=allow_encode)
    model.check_features(features)
    return features
