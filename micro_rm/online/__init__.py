"""Per-user online adaptation: Hedge over the heads with the router as prior, and its store.

>>> from micro_rm.online import UserState, pair_losses, open_store  # doctest: +SKIP
"""

from micro_rm.online.engines import PostgresUserStore, UserStore, open_store
from micro_rm.online.hedge import (DEFAULT_ETA, DEFAULT_P_MIN, UserState, hedge_log_weights, pair_losses, tuned_eta,
                                   validate_eta)
from micro_rm.online.requests import (DuplicateKey, FeedbackRequest, InvalidFeedback, StateInvalid,
                                      StateUnavailable, UserDeleted)
from micro_rm.online.sql import StateStore

__all__ = ["DEFAULT_ETA", "DEFAULT_P_MIN", "DuplicateKey", "FeedbackRequest", "InvalidFeedback",
           "PostgresUserStore", "StateInvalid", "StateStore", "StateUnavailable", "UserDeleted", "UserState",
           "UserStore", "hedge_log_weights", "open_store", "pair_losses", "tuned_eta", "validate_eta"]
