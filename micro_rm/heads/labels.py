"""A short, editable label per head: the (at most two) statistics on which it stands furthest
apart from the other heads (its ``lead``, :mod:`micro_rm.heads.profile`) where the interval
excludes 0, and the attribute it is most accurate on. Stored in ``config.json`` (``head_labels``).

>>> profile = {"num_heads": 1, "statistics": {"names": ["words"],
...            "lead": [[-0.4]], "lead_ci95": [[[-0.5, -0.3]]]},
...            "accuracy": {"attributes": ["all"], "accuracy": [[0.8]]}}
>>> generate_labels(profile)
['prefers short answers']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from micro_rm.errors import MicroRMError
from micro_rm.eval.bootstrap import excludes_zero
from micro_rm.heads.stats import STATISTICS

PHRASES = {s.name: (s.more, s.less) for s in STATISTICS}
MAX_TRAITS = 2
MAX_LABEL = 120   # characters: a label is a name, not a report


def generate_labels(profile: dict[str, Any]) -> list[str]:
    """One label per head from a profile's ``statistics`` and ``accuracy`` sections."""
    stats, accuracy = profile["statistics"], profile["accuracy"]
    attributes = accuracy["attributes"]
    labels = []
    for k in range(profile["num_heads"]):
        lead, ci = stats["lead"][k], stats["lead_ci95"][k]
        ranked = sorted(range(len(lead)), key=lambda s: -abs(lead[s]))
        significant = [s for s in ranked if excludes_zero(ci[s])][:MAX_TRAITS]
        traits = [PHRASES[stats["names"][s]][0 if lead[s] > 0 else 1] for s in significant]
        label = f"prefers {', '.join(traits)} answers" if traits else "no distinctive style"
        if len(attributes) > 1:
            row = accuracy["accuracy"][k]
            label += f"; best on {attributes[max(range(len(row)), key=row.__getitem__)]}"
        labels.append(label)
    return labels


def save_labels(model_dir: str | os.PathLike, labels: Sequence[str], *,
                only: Optional[Sequence[int]] = None) -> list[str]:
    """Write ``labels`` into the ``head_labels`` of the model folder's ``config.json`` (and its
    model card), atomically; with ``only``, just those heads' labels (the others are kept, or
    empty). Returns the stored labels."""
    from micro_rm.atomic import atomic_open
    from micro_rm.model.card import model_card
    from micro_rm.model.config import MixtureConfig

    folder = Path(model_dir)
    path = folder / "config.json"
    if not path.is_file():
        raise MicroRMError(f"{folder}: not a local model folder (no config.json); labels are "
                           "stored in a model's config.json")
    config = MixtureConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
    stored = list(config.head_labels) or [""] * config.num_heads
    for k in (range(config.num_heads) if only is None else only):
        if not 0 <= k < config.num_heads:
            raise MicroRMError(f"--head {k}: the model has heads 0..{config.num_heads - 1}")
        text = labels[k].strip()
        if not text or "\n" in text or len(text) > MAX_LABEL:
            raise MicroRMError(f"label of head {k}: a head label is one non-empty line of at most {MAX_LABEL} "
                               f"characters, got {text[:40]!r}{'…' if len(text) > 40 else ''}")
        stored[k] = text
    config.head_labels = stored                       # checked on assignment
    with atomic_open(path) as fh:
        fh.write(json.dumps(config.to_dict(), indent=2) + "\n")
    with atomic_open(folder / "README.md") as fh:
        fh.write(model_card(config))
    return stored
