"""The reward service (FastAPI): score, compare, OpenRLHF's ``/get_reward``, per-user feedback
with online Hedge, users and tokens, health and metrics. HTTP only: the scoring itself is
:mod:`micro_rm.scoring`'s.

``micro-rm serve --model DIR`` runs it; :func:`create_app` builds it for tests or another ASGI
server. Importing this package loads neither FastAPI nor torch.
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "ServeSettings": "micro_rm.serve.settings",
    "create_app": "micro_rm.serve.app",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.serve", _EXPORTS)
