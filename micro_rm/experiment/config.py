"""``ExperimentConfig``: one YAML file that describes a whole experiment, checked when it is read.

Every section is a pydantic dataclass (``micro_rm.schema.config_class``); the settings shared
with the library (stage 1's K, α, router, …; stage 2's budget, τ, folds) are its own definitions.
A bad value or an unknown key is one error line naming its path (``stage2.tau_grdi``), raised
before any data is read. The shipped examples are ``configs/*.yaml``.

>>> config = ExperimentConfig.from_dict({"data": {"builder": "synthetic"}})
>>> config.stage2.budget, config.stage1.variants[0].protocol
(50, 'context')
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import Field, ValidationError

from micro_rm.errors import MicroRMError
from micro_rm.schema import choice, config_class, explain, integer, integers, number
from micro_rm.train.config import (Alpha, Balance, BatchSize, Budget, Epochs, Folds, Heads, LearningRate,
                                   Router, SEED_MAX, Tau, ValFraction)

PROTOCOLS = ("context", "prompt")   # what the stage-1 router reads: context ⊕ prompt, or the prompt
SELECTIONS = ("validation", "first")
DATA_PLACEHOLDER = "{data}"
MAX_YAML_DEPTH = 32        # the deepest shipped config nests 3; PyYAML recurses once per level


def _doc(help: str) -> Any:
    return Field(description=help)


def _flag(help: str) -> Any:
    """true or false, exactly (not "yes" or 1)."""
    return Annotated[bool, Field(strict=True, description=help)]


@config_class
class DataConfig:
    """Where the pairs come from: a named builder and its source."""

    builder: Annotated[str, Field(min_length=1, json_schema_extra={"allowed": "a builder name"}, description=(
        "Builder name (`micro-rm data list`): dsp, hh-rlhf, topicalchat, pandalm, helpsteer2, rpr, "
        "synthetic, jsonl (any pair file in the record schema), …."))]
    source: Annotated[str, _doc("File, folder or hub id given to the builder; `{data}/…` is the offline "
                                "data folder. For `synthetic`: `key=value,…` settings of the generator.")] = ""
    contexts: Annotated[dict, _doc(
        "{attribute: sentence}, or {attribute: [phrasing, …]}: the context of pairs that have none (the "
        "first phrasing; e.g. helpful / harmless for HH-RLHF). Pairs that carry a context keep it. Lists "
        "are also the phrasings of the held-out-phrasing evaluation (`phrasings`).")] = field(default_factory=dict)
    skip_invalid: _flag("Log and skip invalid records instead of stopping.") = False


@config_class
class BackboneConfig:
    """The frozen feature extractor (`micro-rm encode --help`)."""

    name: Annotated[str, _doc("default (MiniLM), static, a Hugging Face model id or a local folder.")] = "default"
    max_length: Optional[integer(1, "Tokens per item (default: the backbone's).", 1_000_000)] = None
    batch_size: integer(1, "Texts per backbone call.", 65_536) = 32
    device: Annotated[str, _doc("Torch device for encoding and training: cpu, cuda, mps, or auto (cuda "
                                "when available, else cpu).")] = "cpu"
    context_in_reward: _flag("Prepend the context to the prompt of the reward features too (the "
                             "paper's RPR setting).") = False


@config_class
class VariantConfig:
    """One stage-1 configuration of MiCRo in the protocol × regulariser grid."""

    protocol: choice(PROTOCOLS, "What the stage-1 router reads: context (context ⊕ prompt; the paper's "
                     "RPR protocol) or prompt (the HelpSteer2 protocol: the context only in stage 2).") = "context"
    balance: Balance = "marginal"
    alpha: Optional[Alpha] = None      # default: stage1.alpha


@config_class
class Stage1Section:
    """Stage 1 for MiCRo and its baselines; all share K, the optimiser and the epochs."""

    heads: Heads = 4
    variants: Annotated[list[VariantConfig], Field(
        min_length=1, description="The MiCRo grid: a list of {protocol, balance, alpha}; each is trained "
        "and reported (stage 1 and stage 2).",
        json_schema_extra={"allowed": "a non-empty list of {protocol, balance, alpha}"})] = \
        field(default_factory=lambda: [VariantConfig()])
    select: choice(SELECTIONS, "Which variant becomes the `micro` row: validation (the first listed variant "
                   "whose stage-1 validation NLL on held-out train prompts is within one standard error "
                   "of the lowest; no test label is read) or first (the first listed, declared "
                   "primary).") = "validation"
    alpha: Alpha = 0.5
    router: Router = "mlp"
    epochs: Epochs = 30
    lr: LearningRate = 2e-3
    batch_size: BatchSize = 32
    val_fraction: ValFraction = 0.1


@config_class
class Stage2Section:
    """Stage 2 (``micro_rm.train.adapt``): the router adapted to contexts from B labelled pairs per
    attribute drawn from the train split."""

    budget: Budget = 50
    tau: Tau = "auto"
    folds: Folds = 5


@config_class
class HyreSection:
    """HyRe (test-time reweighting of the shared-base ensemble) and MiCRo-HyRe (of MiCRo's heads)."""

    m: integer(1, "Labelled test pairs per attribute used for reweighting (the paper: 16); accuracy is "
               "measured on the attribute's other test pairs.") = 16


@config_class
class CurveSection:
    """The budget curve: stage-2 accuracy against B, mean ± std over seeds."""

    budgets: integers(1, "Budgets B per attribute; those above an attribute's train pairs are skipped "
                      "with a warning.") = field(default_factory=lambda: [5, 10, 20, 50, 100])
    seeds: integer(1, "Draws of the budget per B; the `micro` row is their mean at stage2.budget.", 1000) = 5


@config_class
class UsersSection:
    """Per-user online Hedge against one shared model (DESIGN.md, online adaptation)."""

    enabled: _flag("Measure it (needs `user_id` on the pairs).") = False
    feedback: integer(1, "Labelled train pairs per user fed to that user's Hedge state.") = 32
    eta: number(0.0, math.inf, "Hedge learning rate η (micro_rm.online; default its DEFAULT_ETA = "
                "log(1/p_min) = 4, the exact posterior).", open_low=True) = 4.0


@config_class
class PhrasingsSection:
    """Held-out phrasings (micro_rm.experiment.phrasings); runs when `data.contexts` gives lists."""

    train: integer(1, "Phrasings per attribute (the first ones listed) on the stage-1 training pairs.") = 2
    adapt: integer(0, "The next phrasings: on the stage-2 budget pairs. The rest are test phrasings.") = 2
    budgets: integers(1, "Stage-2 budgets B per attribute evaluated on the test phrasings.") = \
        field(default_factory=lambda: [10, 50])


@config_class
class UserCurveSection:
    """New users online (micro_rm.experiment.users): accuracy after n feedback pairs."""

    enabled: _flag("Measure it: each attribute is one user.") = False
    seeds: integer(1, "Draws of each user's feedback.", 1000) = 5
    eta: Optional[number(0.0, math.inf, "Hedge η (default: the service's, micro_rm.online.DEFAULT_ETA).",
                         open_low=True)] = None


@config_class
class ExperimentConfig:
    """A whole experiment: data, backbone, stage 1 grid and baselines, stage 2, HyRe, oracle,
    budget curve, optional per-user online adaptation, and the paper's numbers to show beside ours."""

    data: Annotated[DataConfig, _doc("The pairs: stage 1 trains on their canonical train split.")]
    title: Annotated[str, _doc("The report's title.")] = "MiCRo experiment"
    eval_data: Annotated[Optional[DataConfig], _doc(
        "Cross-distribution: stage 2 draws its budget from this dataset's train split and every method "
        "is evaluated on its test split (default: `data`).")] = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    stage1: Stage1Section = field(default_factory=Stage1Section)
    stage2: Stage2Section = field(default_factory=Stage2Section)
    hyre: HyreSection = field(default_factory=HyreSection)
    budget_curve: CurveSection = field(default_factory=CurveSection)
    oracle: _flag("Train the oracle reference: one BT head per attribute on all of that attribute's "
                  "train pairs.") = True
    users: UsersSection = field(default_factory=UsersSection)
    phrasings: PhrasingsSection = field(default_factory=PhrasingsSection)
    user_curve: UserCurveSection = field(default_factory=UserCurveSection)
    paper: Annotated[dict, _doc("{method: mean accuracy} reported by the paper, shown beside ours.")] = \
        field(default_factory=dict)
    notes: Annotated[list[str], _doc("Sentences added to the report's notes (analysis, caveats).")] = \
        field(default_factory=list)
    seed: integer(0, "Seed of training and of the first budget draw.", SEED_MAX) = 0
    path: Optional[str] = None    # the YAML file it was read from (set by from_yaml; not a key)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "ExperimentConfig":
        """Build and check a config from parsed YAML; an error names the key path."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise MicroRMError(f"{where}: the file must be a mapping of keys, got {type(data).__name__}")
        if "path" in data:
            raise MicroRMError(f"{where}: unknown key `path`; the top level accepts: "
                               + ", ".join(k for k in cls.__pydantic_fields__ if k != "path"))
        try:
            config = cls.__pydantic_validator__.validate_python(data)
        except ValidationError as exc:
            raise MicroRMError(explain(exc, cls, where)) from None
        config.check(where)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ExperimentConfig":
        """Read a YAML file; a missing file, invalid UTF-8, nesting too deep, bad YAML or a bad key
        is one clear error."""
        import yaml

        from micro_rm.data.readers import read_text

        path = Path(path)
        if not path.is_file():
            raise MicroRMError(f"{path}: config file not found; the shipped ones are in configs/")
        text = read_text(path, "config")
        _check_depth(text, path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise MicroRMError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        config = cls.from_dict(data, where=str(path))
        config.path = str(path)
        return config

    def check(self, where: str = "config") -> None:
        """The checks that span fields: the phrasing lists against the phrasing counts, the paper's numbers."""
        def bad(key: str, expected: str, value: Any) -> MicroRMError:
            return MicroRMError(f"{where}: `{key}` must be {expected}, got {value!r}")

        needed = self.phrasings.train + self.phrasings.adapt + 1
        for attribute, value in self.data.contexts.items():
            if isinstance(value, list) and (not value or not all(isinstance(p, str) and p.strip() for p in value)):
                raise bad(f"data.contexts.{attribute}", "a sentence or a non-empty list of non-empty sentences", value)
            if not isinstance(value, (str, list)):
                raise bad(f"data.contexts.{attribute}", "a sentence or a list of phrasings", value)
            if isinstance(value, list) and len(value) < needed:
                raise bad(f"data.contexts.{attribute}", f"at least {needed} phrasings (phrasings.train "
                          f"{self.phrasings.train} + phrasings.adapt {self.phrasings.adapt} + ≥ 1 to test), "
                          "or one sentence", f"{len(value)} phrasing(s)")
        for name, value in self.paper.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"paper.{name}", "a number (mean accuracy)", value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_depth(text: str, path: Path, limit: int = MAX_YAML_DEPTH) -> None:
    """Refuse YAML nested deeper than ``limit`` before parsing it: PyYAML builds nested values
    recursively, so a deep file would end in a RecursionError. Its event stream is flat."""
    import yaml

    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > limit:
                    raise MicroRMError(f"{path} line {event.start_mark.line + 1}: nested more than {limit} levels "
                                       "deep; an experiment config needs a few")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return  # from_yaml reports bad YAML with its line


def resolve_source(source: str, config_path: Optional[str]) -> str:
    """Where a data source lives. ``{data}`` at its start is the offline datasets' folder:
    ``$MICRO_RM_DATA``, else ``../shared/data`` beside the repository that holds the config. Another
    relative path is read from the current folder if it exists there, else beside the config file.
    Anything else (a hub id) goes to the builder as written.

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
