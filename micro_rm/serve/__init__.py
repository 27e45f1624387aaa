"""The reward service (FastAPI): score, compare, OpenRLHF's ``/get_reward``, per-user feedback
with online Hedge, users and tokens, health and metrics.

``micro-rm serve --model DIR`` runs it; :func:`create_app` builds it for tests or another ASGI
server. Importing this package loads neither FastAPI nor torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "ServeSettings": "micro_rm.serve.settings",
    "create_app": "micro_rm.serve.app",
    "RewardScorer": "micro_rm.serve.scoring",
    "model_state_id": "micro_rm.serve.scoring",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'micro_rm.serve' has no attribute {name!r}")
