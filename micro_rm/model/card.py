"""The model card (``README.md``) of a model folder, with the Hub's metadata.

The YAML header is ``huggingface_hub``'s :class:`ModelCardData`, so the Hub reads its license,
base model (the backbone), datasets and metrics as any model's.

>>> print(model_card(MixtureConfig(num_heads=2, reward_dim=3, route_dim=3))[:40])  # doctest: +SKIP
---
base_model: ...
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from micro_rm.data.readers import hub_id
from micro_rm.model.config import MixtureConfig

DEFAULT_LICENSE = "apache-2.0"   # micro-rm's and the built-in backbone's; the data may say otherwise


def card_metadata(config: MixtureConfig, *, repo_id: Optional[str] = None, license: Optional[str] = None) -> Any:
    """The Hub metadata of a model with ``config`` (a :class:`huggingface_hub.ModelCardData`)."""
    from huggingface_hub import EvalResult, ModelCardData

    fp = config.backbone or {}
    base_model = next(filter(None, (hub_id(fp.get(k)) for k in ("source", "model"))),
                      hub_id((fp.get("spec") or {}).get("name")))
    datasets = sorted({d for d in (hub_id(config.data.get(k)) for k in ("source", "stage2_source")) if d})
    name = repo_id or f"micro-rm-{config.variant}-k{config.num_heads}"
    dataset = datasets[0] if datasets else str(config.data.get("source") or "unknown")
    results = [EvalResult(task_type="text-classification", task_name="Reward modeling",
                          dataset_type=dataset, dataset_name=dataset, metric_type=key,
                          metric_name=key.replace("_", " "), metric_value=float(value))
               for key, value in config.metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
               and key != "best_epoch"]
    return ModelCardData(library_name="micro-rm", license=license or config.data.get("license") or DEFAULT_LICENSE,
                         base_model=base_model, datasets=datasets or None, model_name=name,
                         tags=["reward-model", "rlhf", "personalization", "micro", "mixture-of-experts"],
                         eval_results=results or None)


def model_card(config: MixtureConfig, *, repo_id: Optional[str] = None, license: Optional[str] = None) -> str:
    """The generated ``README.md`` of a model folder: Hub metadata, what it is, its data,
    settings, metrics and a text-in usage example."""
    fp = config.backbone or {}
    settings = config.feature_settings()
    where = repo_id or "path/to/this/folder"
    weighting = ("context-aware " + config.router.upper() + " router" if config.variant == "micro"
                 else config.variant + " weighting")
    count = len(config.context_corrections)
    corrections = f", {count} of them corrections added at stage 2" if count else ""
    metadata = card_metadata(config, repo_id=repo_id, license=license)
    return f"""---
{metadata.to_yaml()}
---

# MiCRo reward model: `{config.variant}`, K = {config.num_heads}

A mixture of {config.num_heads} Bradley–Terry reward head(s) on a frozen backbone, with a
{weighting} (MiCRo, Shen et al., EMNLP 2025), written by
[micro-rm](https://pypi.org/project/micro-rm/) {config.version}.

## Use

```python
from micro_rm import MiCRo

rm = MiCRo.load("{where}")
rm.score("How do I sort a list in Python?", ["Use sorted(xs).", "You can't."],
         context="I am a beginner; explain simply.")   # one routed reward per response
```

or from the shell, one JSON line of rewards, per-head rewards and weights per record:

```bash
micro-rm score --model {where} --data candidates.jsonl --out scores.jsonl --context "I am a beginner."
micro-rm serve --model {where} --anonymous-scoring --labels context   # OpenRLHF's /get_reward
```

A response's reward is Σ_k w_k r_k, w the router's weights for (context, prompt). It ranks
responses consistently with the mixture probability only when one head dominates the routing;
compare two responses with `rm.compare` (Σ_k w_k σ(r_k(a) − r_k(b))).

## Backbone and features
- backbone: `{fp.get('name') or (fp.get('spec') or {}).get('name', 'unknown')}`; reward features
  d = {config.reward_dim}, router features d_r = {config.route_dim}
- router input: `{settings.router_input}`; context in reward features: `{settings.context_in_reward}`;
  route layout `{settings.context_encoding}`
  ({config.context_prototypes} prototype contexts{corrections}, temperature {config.context_temperature:g})

## Training data
{_table('field', config.data)}

## Settings
{_table('setting', config.training)}

## Metrics
{_table('metric', config.metrics)}

## License
`{metadata.license}` for the weights; check the terms of the training data above.
"""


def _table(name: str, values: dict[str, Any]) -> str:
    """The markdown table ``name | value`` of ``values``; one "(none)" row when there are none."""
    rows = [f"| `{k}` | {_fmt(v)} |" for k, v in values.items()] or ["| (none) | |"]
    return "\n".join([f"| {name} | value |", "|---|---|", *rows])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, default=str)}`"
    return str(value)
