"""One scoring engine per process for the adapters that frameworks import as a plain function
(OpenRLHF, verl) and configure only through the environment. Torch-free at import."""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from micro_rm.errors import MicroRMError

MODEL_ENV = "MICRO_RM_MODEL"    # model folder or hub id of the in-process adapters
STATE_ENV = "MICRO_RM_STATE"    # per-user state for `user_id` labels
CONTEXT_ENV = "MICRO_RM_CONTEXT"  # one context for samples that bring none

_loaded: dict[tuple, Any] = {}
_loading = threading.Lock()


def shared_reward_function(model: Optional[str | os.PathLike] = None, *, state: Optional[str] = None,
                           context: Optional[str] = None, **options: Any) -> Any:
    """The :class:`~micro_rm.scoring.engine.RewardEngine` for ``model`` (default
    ``$MICRO_RM_MODEL``), loaded once per process and shared by every caller: OpenRLHF and
    verl call a plain function many times, from several threads."""
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise MicroRMError(f"no MiCRo model: set ${MODEL_ENV} to a model folder (or hub id), or pass "
                           "model=...")
    state = state or os.environ.get(STATE_ENV) or None
    context = context or os.environ.get(CONTEXT_ENV) or None
    key = (str(model), state, context, tuple(sorted(options.items())))
    with _loading:
        if key not in _loaded:
            from micro_rm.scoring.engine import RewardEngine

            _loaded[key] = RewardEngine(str(model), context=context, state=state, **options)
        return _loaded[key]
