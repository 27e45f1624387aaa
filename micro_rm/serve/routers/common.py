"""Helpers the routers share: a user's Hedge state for a request."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from starlette.concurrency import run_in_threadpool

from micro_rm.serve.auth import Principal, check_acts_as


async def user_loss(store: Any, principal: Optional[Principal], user_id: Optional[str]
                    ) -> tuple[Optional[np.ndarray], int]:
    """``(S_u or None, feedback count)`` of ``user_id`` after checking the caller may read it.
    A user without feedback yet scores with the router's weights."""
    if user_id is None:
        return None, 0
    check_acts_as(principal, user_id)
    state = await run_in_threadpool(store.get, user_id, True)
    return state.cumulative_loss, state.num_feedback


def feedback_weights(cumulative_loss: np.ndarray, eta: float, masked: Sequence[int] = ()) -> list[float]:
    """normalise(exp(−η S)): a user's weights under a uniform prior over the heads that are not
    ``masked`` (a masked head's weight is 0)."""
    from micro_rm.online.hedge import hedge_log_weights

    log_prior = np.zeros(len(cumulative_loss))
    log_prior[list(masked)] = -np.inf
    return np.exp(hedge_log_weights(log_prior, cumulative_loss, eta)).tolist()
