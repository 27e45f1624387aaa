"""``micro-rm demo``: the experiment on built-in synthetic data with the static backbone.

Four user groups (concise, expert, cautious, playful) with conflicting preferences over response
styles, each with a context sentence: a single reward model cannot fit the pooled labels, while
MiCRo's heads specialise and its router learns from the context which head a user wants. The
``static`` backbone and 100 prompts finish in under a minute on 2 CPU cores from empty caches.
``DEMO_CONFIG`` is the config; ``configs/demo.yaml`` holds the same settings.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Optional

from micro_rm.data.synthetic import PHRASINGS
from micro_rm.errors import MicroRMError
from micro_rm.experiment.config import ExperimentConfig
from micro_rm.experiment.runner import run_experiment

DEMO_PROMPTS = 100      # chosen by measurement: about a minute from an empty cache (docstring)
DEMO_CONFIG: dict[str, Any] = {
    "title": "micro-rm demo: synthetic users with 4 conflicting tastes",
    "data": {"builder": "synthetic",
             "source": f"n_prompts={DEMO_PROMPTS},pairs_per_prompt=8,responses_per_prompt=8,beta=3,seed=0",
             "contexts": PHRASINGS},
    "backbone": {"name": "static"},      # under a minute from an empty cache (module docstring)
    # The context reaches the stage-1 router (the RPR protocol) and the load-balancing regulariser
    # lets heads specialise: METHOD.md's conclusions 1 and 2.
    "stage1": {"heads": 4, "epochs": 30,
               "variants": [{"protocol": "context", "balance": "marginal"},
                            {"protocol": "context", "balance": "example"}]},
    "stage2": {"budget": 50, "tau": "auto"},
    "hyre": {"m": 16},
    "budget_curve": {"budgets": [5, 10, 20, 50, 100], "seeds": 5},
    "phrasings": {"train": 2, "adapt": 2, "budgets": [10, 50]},
    "user_curve": {"enabled": True, "seeds": 5},
}


def demo_config(prompts: Optional[int] = None) -> ExperimentConfig:
    """The demo's config, with ``prompts`` synthetic prompts instead of the default."""
    data = copy.deepcopy(DEMO_CONFIG)
    if prompts is not None:
        if prompts < 20:
            raise MicroRMError(f"--prompts must be at least 20 (the canonical split needs test prompts), got {prompts}")
        data["data"]["source"] = data["data"]["source"].replace(f"n_prompts={DEMO_PROMPTS}", f"n_prompts={prompts}")
    return ExperimentConfig.from_dict(data, where="demo")


def run_demo(*, out: str | os.PathLike = "runs/demo", backbone: Optional[str] = None, prompts: Optional[int] = None,
             cache: Any = None, progress: bool = True, command: Optional[str] = None,
             force: bool = False) -> Path:
    """Run the demo experiment (on ``backbone`` instead of the config's, if given); return its report folder."""
    config = demo_config(prompts)
    if prompts is not None and prompts < 100:       # small runs (tests): fewer budgets and HyRe labels
        config.stage2.budget, config.hyre.m = 10, 4
        config.budget_curve.budgets, config.budget_curve.seeds = [5, 10], 2
    return run_experiment(config, backbone=backbone, out=out, cache=cache, progress=progress,
                          command=command or "micro-rm demo", force=force)
