"""The settings that rebuild a model (``config.json``) and the closed choices of the model family.

Kept free of torch, so the command line can build ``--help`` from it without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from micro_rm import __version__
from micro_rm.errors import MicroRMError

if TYPE_CHECKING:
    from micro_rm.features.base import FeatureSettings

VARIANTS = ("micro", "single", "static", "shared-base")
ROUTERS = ("mlp", "linear")
BALANCES = ("example", "marginal")


@dataclass
class MixtureConfig:
    """Everything that rebuilds a model; saved as ``config.json`` beside the weights."""

    num_heads: int                      # K, the number of reward heads (1 for ``single``)
    reward_dim: int                     # d, width of the reward features (backbone dim)
    route_dim: int                      # d_r, width of the router features
    variant: str = "micro"              # one of VARIANTS (see micro_rm.model.mixture)
    router: str = "mlp"                 # ``mlp``: d_r → hidden → K, ReLU (the paper's); ``linear``: d_r → K
    router_hidden: int = 128            # hidden units of the MLP router (the paper: 128)
    context_dim: int = 0                # width of emb(context) at the end of the route features
                                        # ([emb(prompt); emb(context)]); 0: one joint route vector
    context_encoding: str = ""          # how the route features were made (featurize.CONTEXT_ENCODINGS);
                                        # "" (older configs): "separate" with a context width, else "joint"
    context_prototypes: int = 0         # number of prototype contexts of that branch
    context_corrections: list = field(default_factory=list)  # indices of the prototypes that stage 2
                                        # added as corrections (ContextRouter); [] before stage 2
    context_temperature: float = 0.05   # temperature of the attention over the prototypes (cosine)
    prior_scale: float = 1.0            # ``shared-base``: scale of the frozen prior heads, relative
                                        # to PyTorch's default Linear init U(±1/√d) (HyRe's prior)
    backbone: dict = field(default_factory=dict)   # fingerprint of the backbone; its "spec" rebuilds it
    feature: dict = field(default_factory=dict)    # the FeatureSettings it was trained with; {}: defaults
    training: dict = field(default_factory=dict)   # the Stage1Config it was fitted with, or export info
    data: dict = field(default_factory=dict)       # what it was trained on (source, pairs)
    metrics: dict = field(default_factory=dict)    # losses / accuracies to show in the model card
    masked_heads: list = field(default_factory=list)  # heads the router may never weight (``micro-rm
                                                      # heads mask``); π renormalises over the rest
    head_labels: list = field(default_factory=list)   # one short, editable description per head
                                                      # (``micro-rm heads``), or empty
    version: str = __version__                     # micro-rm version that wrote it

    def __post_init__(self) -> None:
        for name, low in (("num_heads", 1), ("reward_dim", 1), ("route_dim", 1), ("router_hidden", 1),
                          ("context_dim", 0), ("context_prototypes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MicroRMError(f"`{name}` must be an integer ≥ {low}, got {value!r}")
        if self.variant not in VARIANTS:
            raise MicroRMError(f"`variant` must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.router not in ROUTERS:
            raise MicroRMError(f"`router` must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.context_dim >= self.route_dim:
            raise MicroRMError(f"`context_dim` must be an integer in [0, route_dim), got {self.context_dim!r}")
        corrections = self.context_corrections
        if not isinstance(corrections, list) or len(set(map(str, corrections))) != len(corrections) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.context_prototypes
                for i in corrections):
            raise MicroRMError("`context_corrections` must be a list of distinct prototype indices in "
                               f"[0, context_prototypes = {self.context_prototypes}), got {corrections!r}")
        from micro_rm.features.base import CONTEXT_ENCODINGS, recorded_encoding

        self.context_encoding = recorded_encoding(self.context_encoding, self.context_dim)
        if self.context_encoding not in CONTEXT_ENCODINGS or (self.context_encoding == "joint") != (not self.context_dim):
            raise MicroRMError(f"`context_encoding` must be one of {', '.join(CONTEXT_ENCODINGS)}, 'joint' exactly "
                               f"when context_dim is 0, got {self.context_encoding!r} with context_dim "
                               f"{self.context_dim}")
        for name, low, bound in (("context_temperature", 0, ">"), ("prior_scale", 0, "≥")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (value <= low if bound == ">" else value < low):
                raise MicroRMError(f"`{name}` must be a finite number {bound} {low}, got {value!r}")
        if self.variant == "single" and self.num_heads != 1:
            raise MicroRMError(f"`num_heads` must be 1 for variant 'single', got {self.num_heads}")
        masked = self.masked_heads
        if not isinstance(masked, list) or any(isinstance(k, bool) or not isinstance(k, int)
                                                or not 0 <= k < self.num_heads for k in masked) \
                or len(set(masked)) != len(masked) or len(masked) >= self.num_heads:
            raise MicroRMError(f"`masked_heads` must be distinct head indices in [0, {self.num_heads}) "
                               f"that leave at least one head, got {masked!r}")
        labels = self.head_labels
        if not isinstance(labels, list) or (labels and (len(labels) != self.num_heads
                                                        or not all(isinstance(t, str) for t in labels))):
            raise MicroRMError(f"`head_labels` must be empty or {self.num_heads} strings, got {labels!r}")
        for name in ("backbone", "feature", "training", "data", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise MicroRMError(f"`{name}` must be a JSON object, got {type(getattr(self, name)).__name__}")
        self.feature_settings()                     # an unknown feature setting is refused at load
        if not isinstance(self.version, str) or not self.version.split(".")[0].isdigit():
            raise MicroRMError(f"`version` must be a version string like '0.1.0', got {self.version!r}")

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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MicroRMError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"known fields are {', '.join(sorted(known))}")
        for name in ("num_heads", "reward_dim", "route_dim", "variant", "version"):
            if name not in data:
                raise MicroRMError(f"{where}: missing field `{name}`")
        try:
            return cls(**data)
        except MicroRMError as exc:
            raise MicroRMError(f"{where}: {exc}") from None
