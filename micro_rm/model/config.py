"""The settings that rebuild a model (``config.json``) and the closed choices of the model family.

Kept free of torch, so the command line can build ``--help`` from it without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, field
from typing import TYPE_CHECKING, Annotated, Any

import pydantic
from pydantic import Field

from micro_rm import __version__
from micro_rm.errors import MicroRMError
from micro_rm.schema import accepts, choice, config_class, integer, integers, number

if TYPE_CHECKING:
    from micro_rm.features.base import FeatureSettings

VARIANTS = ("micro", "single", "static", "shared-base")
ROUTERS = ("mlp", "linear")
BALANCES = ("example", "marginal")


@config_class
class MixtureConfig:
    """Everything that rebuilds a model; saved as ``config.json`` beside the weights. Checked on
    construction and on assignment (:mod:`micro_rm.schema`)."""

    num_heads: integer(1, "K, the number of reward heads (1 for ``single``).")
    reward_dim: integer(1, "d, width of the reward features (backbone dim).")
    route_dim: integer(1, "d_r, width of the router features.")
    variant: choice(VARIANTS, "The model family (see micro_rm.model.mixture).") = "micro"
    router: choice(ROUTERS, "mlp: d_r → hidden → K, ReLU (the paper's); linear: d_r → K.") = "mlp"
    router_hidden: integer(1, "Hidden units of the MLP router (the paper: 128).") = 128
    context_dim: integer(0, "Width of emb(context) at the end of the route features ([emb(prompt); "
                         "emb(context)]); 0: one joint route vector.") = 0
    context_encoding: str = ""          # how the route features were made (featurize.CONTEXT_ENCODINGS);
                                        # "" (older configs): "separate" with a context width, else "joint"
    context_prototypes: integer(0, "Number of prototype contexts of that branch.") = 0
    context_corrections: integers(0, "Indices of the prototypes that stage 2 added as corrections "
                                  "(ContextRouter); [] before stage 2.") = field(default_factory=list)
    context_temperature: number(0, math.inf, "Temperature of the attention over the prototypes (cosine).",
                                open_low=True) = 0.05
    prior_scale: number(0, math.inf, "shared-base: scale of the frozen prior heads, relative to PyTorch's "
                        "default Linear init U(±1/√d) (HyRe's prior).") = 1.0
    backbone: dict = field(default_factory=dict)   # fingerprint of the backbone; its "spec" rebuilds it
    feature: dict = field(default_factory=dict)    # the FeatureSettings it was trained with; {}: defaults
    training: dict = field(default_factory=dict)   # the Stage1Config it was fitted with, or export info
    data: dict = field(default_factory=dict)       # what it was trained on (source, pairs)
    metrics: dict = field(default_factory=dict)    # losses / accuracies to show in the model card
    masked_heads: integers(0, "Heads the router may never weight (``micro-rm heads mask``); π "
                           "renormalises over the rest.") = field(default_factory=list)
    head_labels: list[str] = field(default_factory=list)   # one short, editable description per head
                                                           # (``micro-rm heads``), or empty
    version: Annotated[str, Field(pattern=r"^\d+(\.|$)"), accepts("a version string like '0.1.0'",
                                                                   "micro-rm version that wrote it.")] = __version__

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "MixtureConfig":
        """The checks that relate fields; an older config's ``context_encoding`` ("") is filled in."""
        from micro_rm.features.base import CONTEXT_ENCODINGS, recorded_encoding

        k, corrections, masked = self.num_heads, self.context_corrections, self.masked_heads
        if self.context_dim >= self.route_dim:
            raise MicroRMError(f"`context_dim` must be an integer in [0, route_dim), got {self.context_dim!r}")
        if len(set(corrections)) != len(corrections) or any(i >= self.context_prototypes for i in corrections):
            raise MicroRMError("`context_corrections` must be a list of distinct prototype indices in "
                               f"[0, context_prototypes = {self.context_prototypes}), got {corrections!r}")
        encoding = recorded_encoding(self.context_encoding, self.context_dim)
        self.__dict__["context_encoding"] = encoding     # not through setattr: that would validate again
        if encoding not in CONTEXT_ENCODINGS or (encoding == "joint") != (not self.context_dim):
            raise MicroRMError(f"`context_encoding` must be one of {', '.join(CONTEXT_ENCODINGS)}, 'joint' exactly "
                               f"when context_dim is 0, got {encoding!r} with context_dim {self.context_dim}")
        if self.variant == "single" and k != 1:
            raise MicroRMError(f"`num_heads` must be 1 for variant 'single', got {k}")
        if len(set(masked)) != len(masked) or any(i >= k for i in masked) or len(masked) >= k:
            raise MicroRMError(f"`masked_heads` must be distinct head indices in [0, {k}) "
                               f"that leave at least one head, got {masked!r}")
        if self.head_labels and len(self.head_labels) != k:
            raise MicroRMError(f"`head_labels` must be empty or {k} strings, got {self.head_labels!r}")
        self.feature_settings()                     # an unknown feature setting is refused at load
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def feature_settings(self) -> "FeatureSettings":
        """The feature settings the model was trained with (``feature`` and ``context_encoding``);
        a config saved before they were recorded reads as the defaults."""
        from micro_rm.features.base import FeatureSettings

        return FeatureSettings.from_record(self.feature, self.context_encoding)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "MixtureConfig":
        """Build from a parsed ``config.json``; a missing, unknown or bad field is an error naming
        the field and ``where``."""
        if not isinstance(data, dict):
            raise MicroRMError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for name in ("variant", "version"):         # always saved; a file without them was not
            if name not in data:                    # written by micro-rm
                raise MicroRMError(f"{where}: missing key `{name}`")
        try:
            return cls(**data)
        except MicroRMError as exc:
            raise MicroRMError(f"{where}: {exc}") from None
