"""``ExperimentConfig``: one YAML file that describes a whole experiment, parsed into dataclasses.

Every section is a dataclass whose fields are documented once; an unknown key anywhere is an
error that names its path (``stage2.tau_grdi``) and the keys that section accepts, so a typo can
never be silently ignored (nanoGPT's configurator does the same).

Example (``configs/dsp.yaml``, abridged)::

    title: DSP (4 domains), default backbone
    data: {builder: dsp, source: "{data}/dsp-domain-specific-preference"}
    backbone: {name: default}
    stage1:
      heads: 4
      variants:
        - {protocol: context, balance: marginal}
        - {protocol: prompt, balance: example}
    stage2: {budget: 50, tau: auto}

Data sources: ``{data}`` at the start of a source is the folder of the offline real datasets,
``$MICRO_RM_DATA`` when set, else ``../shared/data`` beside the repository that holds the config
(the config's folder's parent). Another relative path is read relative to the current folder
when it exists there, else relative to the config file's folder. Anything else (a hub id such as
``nvidia/HelpSteer2``) goes to the builder as written.

>>> config = ExperimentConfig.from_dict({"data": {"builder": "synthetic"}})
>>> config.stage2.budget, config.stage1.variants[0].protocol
(50, 'context')
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from micro_rm.errors import MicroRMError

PROTOCOLS = ("context", "prompt")   # what the stage-1 router reads: context ⊕ prompt, or the prompt
BALANCES = ("example", "marginal")  # micro_rm.model.config.BALANCES (kept torch-free here)
SELECTIONS = ("validation", "first")
DATA_PLACEHOLDER = "{data}"


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class DataConfig:
    """Where the pairs come from: a named builder and its source."""

    builder: str = _doc("Builder name (`micro-rm data list`): dsp, hh-rlhf, topicalchat, pandalm, "
                        "helpsteer2, rpr, synthetic, jsonl (any pair file in the record schema), ….")
    source: str = _doc("File, folder or hub id given to the builder; `{data}/…` is the offline "
                       "data folder. For `synthetic`: `key=value,…` settings of the generator.", "")
    contexts: dict = _doc("{attribute: sentence}, or {attribute: [phrasing, …]}: the context of "
                          "pairs that have none (the first phrasing; e.g. helpful / harmless for "
                          "HH-RLHF). Pairs that carry a context keep it. Lists are also the "
                          "phrasings of the held-out-phrasing evaluation (`phrasings`).",
                          factory=dict)
    skip_invalid: bool = _doc("Log and skip invalid records instead of stopping.", False)


@dataclass
class BackboneConfig:
    """The frozen feature extractor (`micro-rm encode --help`)."""

    name: str = _doc("default (MiniLM), static, a Hugging Face model id or a local folder.", "default")
    max_length: Optional[int] = _doc("Tokens per item (default: the backbone's).", None)
    batch_size: int = _doc("Texts per backbone call.", 32)
    device: str = _doc("Torch device for encoding and training: cpu, cuda, mps, or auto (cuda when "
                       "available, else cpu).", "cpu")
    context_in_reward: bool = _doc("Prepend the context to the prompt of the reward features too "
                                   "(the paper's RPR setting).", False)


@dataclass
class VariantConfig:
    """One stage-1 configuration of MiCRo in the protocol × regulariser grid."""

    protocol: str = _doc("What the stage-1 router reads: context (context ⊕ prompt; the paper's RPR "
                         "protocol) or prompt (the HelpSteer2 protocol: the context only in stage 2).",
                         "context")
    balance: str = _doc("Router regulariser: marginal (entropy of the batch-mean routing: load "
                        "balancing; the default) or example (the paper's per-pair entropy).", "marginal")
    alpha: Optional[float] = _doc("Regulariser weight α (default: stage1.alpha).", None)


@dataclass
class Stage1Section:
    """Stage 1 for MiCRo and its baselines; all share K, the optimiser and the epochs."""

    heads: int = _doc("Number of heads K (the paper: 5 for HelpSteer2, 10 for RPR).", 4)
    variants: list = _doc("The MiCRo grid: a list of {protocol, balance, alpha}; each is trained and "
                          "reported (stage 1 and stage 2).", factory=lambda: [VariantConfig()])
    select: str = _doc("Which variant becomes the `micro` row: validation (the first listed variant "
                       "whose stage-1 validation NLL on held-out train prompts is within one standard "
                       "error of the lowest; no test label is read) or first (the first listed, "
                       "declared primary).", "validation")
    alpha: float = _doc("Regulariser weight α (the paper: 0.5).", 0.5)
    router: str = _doc("Router network: mlp (the paper's) or linear.", "mlp")
    epochs: int = _doc("Passes over the training pairs.", 30)
    lr: float = _doc("Peak AdamW learning rate (the paper: 2e-3).", 2e-3)
    batch_size: int = _doc("Pairs per step (the paper: 32 effective).", 32)
    val_fraction: float = _doc("Fraction of train prompts held out for early stopping and variant "
                               "selection.", 0.1)


@dataclass
class Stage2Section:
    """Stage 2: adapt the router to contexts from B labelled pairs per attribute (Algorithm 1)."""

    budget: int = _doc("B, context pairs per attribute drawn from the train split (the paper: 50). "
                       "An attribute with fewer train pairs is used whole, with a warning (as `micro-rm adapt` does).", 50)
    tau: Union[float, str] = _doc("Hedge temperature τ (the paper: 1e-3 HelpSteer2, 1e-4 RPR), or "
                                  "auto: chosen from tau_grid by k-fold CV of the mixture NLL on the "
                                  "budget pairs.", "auto")
    algorithm: str = _doc("safe (keep-or-adapt by cross-validation, one Hedge step per context; the default) or paper "
                          "(Algorithm 1 as written); see micro_rm.train.stage2.", "safe")
    epochs: int = _doc("Epochs T of Algorithm 1 (the paper: 10).", 10)
    batch_size: int = _doc("Pairs per step (the paper: 32).", 32)
    lr: Optional[float] = _doc("Router learning rate (default: stage 2's).", None)
    tau_grid: Optional[list] = _doc("Candidate τ for tau: auto (default: stage 2's grid).", None)
    folds: int = _doc("Folds of the τ cross-validation.", 5)
    heldout: str = _doc("What a fold holds out: phrasing (whole wordings where an attribute's budget "
                        "has several, prompts elsewhere; the default) or prompt.", "phrasing")
    update: str = _doc("What safe stage 2's candidates re-weight: heads, contexts (a new wording's "
                       "Hedge over the routings stage 1 knows) or both (the default).", "both")
    wordings: str = _doc("How safe stage 2 adds a wording stage 1 never saw: prototypes, corrections "
                         "(added to stage 1's routing, taking no attention from its prototypes) or "
                         "both (the default, chosen by cross-validation).", "both")


@dataclass
class HyreSection:
    """HyRe (test-time reweighting of the shared-base ensemble) and MiCRo-HyRe (of MiCRo's heads)."""

    m: int = _doc("Labelled test pairs per attribute used for reweighting (the paper: 16); "
                  "accuracy is measured on the attribute's other test pairs.", 16)


@dataclass
class CurveSection:
    """The budget curve: stage-2 accuracy against B, mean ± std over seeds."""

    budgets: list = _doc("Budgets B per attribute; those above an attribute's train pairs are "
                         "skipped with a warning.", factory=lambda: [5, 10, 20, 50, 100])
    seeds: int = _doc("Draws of the budget per B; the `micro` row is their mean at stage2.budget.", 5)


@dataclass
class UsersSection:
    """Per-user online Hedge against one shared model (DESIGN.md, online adaptation)."""

    enabled: bool = _doc("Measure it (needs `user_id` on the pairs).", False)
    feedback: int = _doc("Labelled train pairs per user fed to that user's Hedge state.", 32)
    eta: float = _doc("Hedge learning rate η (micro_rm.online; default its DEFAULT_ETA = log(1/p_min) = 4, the exact posterior).", 4.0)


@dataclass
class PhrasingsSection:
    """Held-out phrasings (micro_rm.experiment.phrasings); runs when `data.contexts` gives lists."""

    train: int = _doc("Phrasings per attribute (the first ones listed) on the stage-1 training pairs.", 2)
    adapt: int = _doc("The next phrasings: on the stage-2 budget pairs. The rest are test phrasings.", 2)
    budgets: list = _doc("Stage-2 budgets B per attribute evaluated on the test phrasings.",
                         factory=lambda: [10, 50])


@dataclass
class UserCurveSection:
    """New users online (micro_rm.experiment.users): accuracy after n feedback pairs."""

    enabled: bool = _doc("Measure it: each attribute is one user.", False)
    seeds: int = _doc("Draws of each user's feedback.", 5)
    eta: Optional[float] = _doc("Hedge η (default: the service's, micro_rm.online.DEFAULT_ETA).", None)


@dataclass
class ExperimentConfig:
    """A whole experiment: data, backbone, stage 1 grid and baselines, stage 2, HyRe, oracle,
    budget curve, optional per-user online adaptation, and the paper's numbers to show beside ours."""

    data: DataConfig = _doc("The pairs: stage 1 trains on their canonical train split.")
    title: str = _doc("The report's title.", "MiCRo experiment")
    eval_data: Optional[DataConfig] = _doc("Cross-distribution: stage 2 draws its budget from this "
                                           "dataset's train split and every method is evaluated on "
                                           "its test split (default: `data`).", None)
    backbone: BackboneConfig = _doc("The frozen backbone.", factory=BackboneConfig)
    stage1: Stage1Section = _doc("Stage 1 and the baselines.", factory=Stage1Section)
    stage2: Stage2Section = _doc("Stage 2.", factory=Stage2Section)
    hyre: HyreSection = _doc("HyRe and MiCRo-HyRe.", factory=HyreSection)
    budget_curve: CurveSection = _doc("The budget curve.", factory=CurveSection)
    oracle: bool = _doc("Train the oracle reference: one BT head per attribute on all of that "
                        "attribute's train pairs.", True)
    users: UsersSection = _doc("Per-user online Hedge.", factory=UsersSection)
    phrasings: PhrasingsSection = _doc("Held-out phrasings.", factory=PhrasingsSection)
    user_curve: UserCurveSection = _doc("New users' learning curve.", factory=UserCurveSection)
    paper: dict = _doc("{method: mean accuracy} reported by the paper, shown beside ours.", factory=dict)
    notes: list = _doc("Sentences added to the report's notes (analysis, caveats).", factory=list)
    seed: int = _doc("Seed of training and of the first budget draw.", 0)
    path: Optional[str] = _doc("The YAML file it was read from (set by from_yaml).", None)

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "ExperimentConfig":
        """Build and check a config from parsed YAML; errors name the key path."""
        config = _build(cls, data, where, "")
        config.check(where)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ExperimentConfig":
        """Read a YAML file; a missing file, bad YAML or a bad key is one clear error."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise MicroRMError(f"{path}: config file not found; the shipped ones are in configs/")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise MicroRMError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        config = cls.from_dict(data, where=str(path))
        config.path = str(path)
        return config

    def check(self, where: str = "config") -> None:
        """Value checks that the types alone cannot express."""
        def bad(key: str, expected: str, value: Any) -> MicroRMError:
            return MicroRMError(f"{where}: `{key}` must be {expected}, got {value!r}")

        if not self.data.builder:
            raise bad("data.builder", "a builder name", self.data.builder)
        if self.stage1.heads < 1:
            raise bad("stage1.heads", "an integer ≥ 1", self.stage1.heads)
        if not self.stage1.variants:
            raise bad("stage1.variants", "a non-empty list of {protocol, balance}", self.stage1.variants)
        for i, v in enumerate(self.stage1.variants):
            if v.protocol not in PROTOCOLS:
                raise bad(f"stage1.variants[{i}].protocol", f"one of {', '.join(PROTOCOLS)}", v.protocol)
            if v.balance not in BALANCES:
                raise bad(f"stage1.variants[{i}].balance", f"one of {', '.join(BALANCES)}", v.balance)
        if self.stage1.select not in SELECTIONS:
            raise bad("stage1.select", f"one of {', '.join(SELECTIONS)}", self.stage1.select)
        for key in ("stage1.epochs", "stage1.batch_size", "stage2.budget", "stage2.epochs",
                    "stage2.batch_size", "stage2.folds", "hyre.m", "budget_curve.seeds", "users.feedback"):
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value < 1:
                raise bad(key, "an integer ≥ 1", value)
        from micro_rm.train.stage2 import ALGORITHMS, HELDOUT, UPDATES, WORDINGS

        for key, allowed in (("algorithm", ALGORITHMS), ("heldout", HELDOUT), ("update", UPDATES),
                             ("wordings", WORDINGS)):
            if getattr(self.stage2, key) not in allowed:
                raise bad(f"stage2.{key}", f"one of {', '.join(allowed)}", getattr(self.stage2, key))
        tau = self.stage2.tau
        if not (tau == "auto" or (isinstance(tau, (int, float)) and not isinstance(tau, bool)
                                  and math.isfinite(tau) and tau > 0)):
            raise bad("stage2.tau", "a number > 0 or auto", tau)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.budget_curve.budgets):
            raise bad("budget_curve.budgets", "a list of integers ≥ 1", self.budget_curve.budgets)
        if not (isinstance(self.users.eta, (int, float)) and self.users.eta > 0):
            raise bad("users.eta", "a number > 0", self.users.eta)
        for attribute, value in self.data.contexts.items():
            if isinstance(value, list) and (not value or not all(isinstance(p, str) and p.strip() for p in value)):
                raise bad(f"data.contexts.{attribute}", "a sentence or a non-empty list of non-empty sentences", value)
            if not isinstance(value, (str, list)):
                raise bad(f"data.contexts.{attribute}", "a sentence or a list of phrasings", value)
        needed = self.phrasings.train + self.phrasings.adapt + 1
        for attribute, value in self.data.contexts.items():
            if isinstance(value, list) and len(value) < needed:
                raise bad(f"data.contexts.{attribute}", f"at least {needed} phrasings (phrasings.train "
                          f"{self.phrasings.train} + phrasings.adapt {self.phrasings.adapt} + ≥ 1 to test), "
                          "or one sentence", f"{len(value)} phrasing(s)")
        for key in ("phrasings.train", "phrasings.adapt", "user_curve.seeds"):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) < (0 if name == "adapt" else 1):
                raise bad(key, "a positive integer", getattr(getattr(self, section), name))
        for name, value in self.paper.items():
            if not isinstance(value, (int, float)):
                raise bad(f"paper.{name}", "a number (mean accuracy)", value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def help(section: type, name: str) -> str:
        return next(f.metadata.get("help", "") for f in fields(section) if f.name == name)


def resolve_source(source: str, config_path: Optional[str]) -> str:
    """Where a data source lives, following the rules in the module docstring.

    >>> resolve_source("nvidia/HelpSteer2", None)
    'nvidia/HelpSteer2'
    """
    if source.startswith(DATA_PLACEHOLDER):
        rest = source[len(DATA_PLACEHOLDER):].lstrip("/")
        env = os.environ.get("MICRO_RM_DATA")
        if env:
            root = Path(env)
        else:
            base = Path(config_path).resolve().parent.parent if config_path else Path.cwd()
            root = base / ".." / "shared" / "data"
        path = (root / rest).resolve()
        if not path.exists():
            raise MicroRMError(f"data source {source!r}: {path} does not exist; set MICRO_RM_DATA to "
                               "the folder of the offline datasets (../shared/data)")
        return str(path)
    path = Path(source).expanduser()
    if path.is_absolute() or path.exists() or not config_path:
        return str(path) if path.exists() else source
    beside = Path(config_path).resolve().parent / path
    return str(beside) if beside.exists() else source


# ---------------------------------------------------------------------- the generic parser

def _build(cls: type, data: Any, where: str, prefix: str) -> Any:
    """``cls(**data)`` with every field converted by its annotation; unknown keys are an error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MicroRMError(f"{where}: `{prefix or 'the file'}` must be a mapping of keys, got "
                           f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known or k == "path"]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        choices = ", ".join(k for k in known if k != "path")
        raise MicroRMError(f"{where}: unknown key `{key}`; {prefix or 'the top level'} accepts: {choices}")
    values = {}
    for name, f in known.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MicroRMError(f"{where}: missing key `{key}` ({f.metadata.get('help', '')})")
            continue
        values[name] = _convert(hints[name], data[name], where, key)
    return cls(**values)


_SECTIONS = {"variants": VariantConfig}


def _convert(hint: Any, value: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(option, value, where, key)
            except MicroRMError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise MicroRMError(f"{where}: `{key}` must be {names}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key)
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise MicroRMError(f"{where}: `{key}` must be a list, got {value!r}")
        item = _SECTIONS.get(key.rsplit(".", 1)[-1])
        return [_build(item, v, where, f"{key}[{i}]") if item else v for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise MicroRMError(f"{where}: `{key}` must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise MicroRMError(f"{where}: `{key}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MicroRMError(f"{where}: `{key}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MicroRMError(f"{where}: `{key}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise MicroRMError(f"{where}: `{key}` must be a string, got {value!r}")
        return value
    return value
