"""What a per-user state store is asked and answers, whatever its engine, and why it refuses
(each error's ``status`` is the service's answer)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from micro_rm.errors import MicroRMError


class StaleRequest(MicroRMError):
    """A feedback request that must not be applied; ``index`` is its place in the group."""

    def __init__(self, message: str, index: int = 0):
        super().__init__(message)
        self.index = index


class UserDeleted(StaleRequest):
    """The user was deleted (or its token revoked) after the request was authorised."""


class DuplicateKey(StaleRequest):
    """The request's Idempotency-Key was already used: it was applied once, by an earlier call."""


class InvalidFeedback(StaleRequest):
    """The request's losses are not finite, or would make a user's state non-finite (HTTP 422)."""

    status = 422


class StateInvalid(MicroRMError):
    """A user's stored state is damaged (not K finite numbers): refused, never served (HTTP 409)."""

    status = 409


class StateUnavailable(MicroRMError):
    """The state database cannot be read or written (damaged file, lost connection): HTTP 503."""

    status = 503


@dataclasses.dataclass
class FeedbackRequest:
    """One service request: its ``(user_id, losses [n, K], payloads)`` batches, applied all or
    none. ``epochs`` (user → epoch at authorisation) refuses the request if a user was deleted
    since; ``key`` (scope, Idempotency-Key, request hash) records it so a retry applies nothing."""

    batches: Sequence[tuple[str, Any, Sequence[Mapping[str, Any]] | None]]
    epochs: Mapping[str, int] | None = None
    key: tuple[str, str, str] | None = None


@dataclasses.dataclass
class IdempotentResult:
    """What a stored Idempotency-Key holds: the body's hash and each user's state right after
    (None once a user it wrote to was deleted: the key stays used, its outcome is forgotten)."""

    request_sha256: str
    states: dict[str, list[Any]] | None   # user → [num_feedback, cumulative_loss]: the stored JSON

