"""``ServeSettings``: everything ``micro-rm serve`` can be told, each field documented once.
Kept free of torch and FastAPI (the CLI builds ``--help`` from it).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from micro_rm.errors import MicroRMError
from micro_rm.online.hedge import DEFAULT_ETA, validate_eta
from micro_rm.schema import config_class, integer, number
from micro_rm.scoring.limits import ScoringLimits

ADMIN_TOKEN_ENV = "MICRO_RM_ADMIN_TOKEN"
MIN_ADMIN_TOKEN_CHARS = 16


def _help(text: str, default: Any) -> Any:
    return Field(default, description=text)


@config_class(flags=True)
class ServeSettings:
    """Settings of the reward service. Each field's help is also the CLI's ``--help``; a bad value
    is one error line naming the flag."""

    # what it serves
    model: str = _help("Model folder written by `micro-rm train` (or a hub id owner/name).", "")
    state: str = _help("Per-user state: a path, sqlite:///PATH (default engine, WAL) or "
                       "postgresql://USER:PASSWORD@HOST/DB (several replicas; needs the "
                       "psycopg package). User tokens (hashes) live there too.",
                       "sqlite:///state.db")
    eta: float = _help("Hedge learning rate η: after feedback, a head whose summed scaled loss "
                       "is Δ higher has its weight multiplied by exp(-η Δ) relative to the "
                       "router's prior. Larger trusts a user's labels sooner.", DEFAULT_ETA)
    device: str = _help("Torch device of the backbone and the model: cpu, cuda, mps.", "cpu")
    # network and security
    host: str = _help("Interface to bind; the default answers only this machine.", "127.0.0.1")
    port: integer(0, "TCP port.", 65535) = 8000
    admin_token: Optional[str] = Field(None, repr=False, description="Admin bearer token (creates users and "
                                       f"their tokens); also ${ADMIN_TOKEN_ENV}.")
    anonymous_scoring: bool = _help("Let requests without a token score (without a user_id, "
                                    "unless --labels names one): OpenRLHF's remote reward "
                                    "client sends no Authorization header.", False)
    labels: str = _help("What OpenRLHF's per-sample `labels` (its --label_key column) carry to "
                        "/get_reward: ignore, context (the label is the sample's context), "
                        "user_id (score with that user's weights) or json (an object with "
                        "`context` and/or `user_id`).", "ignore")
    max_body_bytes: integer(1, "Largest request body in bytes (larger: 413).") = 16_000_000
    body_timeout_s: number(0, 3600, "Longest time to receive a request body, from the request's "
                           "start; a client that stalls mid-upload gets 408 and its connection "
                           "is closed.", open_low=True) = 30.0
    max_texts: integer(1, "Most texts per request: responses, queries or feedback pairs "
                       "(more: 413).") = ScoringLimits.max_texts
    max_text_chars: integer(1, "Longest text (prompt, response, context) in characters "
                            "(longer: 422); the default takes an 8k-token RLHF context "
                            "(OpenRLHF's prompt + response) with room to spare.") = ScoringLimits.max_text_chars
    # features
    cache_dir: Optional[str] = _help("Feature cache folder (default: $MICRO_RM_CACHE or the user "
                                     "cache dir).", None)
    disk_cache: bool = _help("Read and write the on-disk feature cache (off: in-memory LRU only).",
                             True)
    lru_items: integer(0, "Feature vectors kept in memory (least recently used dropped).") = 100_000
    batch_wait_ms: number(0, 1000, "How long the micro-batcher waits for more texts before it runs "
                          "the backbone. 0: a batch is what queued while the backbone was "
                          "busy (measured best, BENCHMARKS.md).") = 0.0
    max_batch_items: integer(1, "Most texts per backbone forward of the micro-batcher.") = 256
    encode_batch_size: integer(1, "Texts per backbone call inside one micro-batch.") = 32

    def __post_init__(self) -> None:
        from micro_rm.integrations.openrlhf import check_label_mode
        check_label_mode(self.labels, "--labels")
        self.eta = validate_eta(self.eta)
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise MicroRMError(f"the admin token must have at least {MIN_ADMIN_TOKEN_CHARS} "
                               "characters; make one with `python -c \"import secrets; "
                               "print(secrets.token_urlsafe(32))\"`")

    @functools.cached_property
    def limits(self) -> ScoringLimits:
        """The scoring engine's per-request limits, named by this service's flags in messages (built
        once: every request reads them)."""
        return ScoringLimits(max_texts=self.max_texts, max_text_chars=self.max_text_chars, flags=True)


def read_admin_token(token_file: Optional[str | os.PathLike] = None) -> Optional[str]:
    """The admin token from ``token_file`` (first line) or ``$MICRO_RM_ADMIN_TOKEN``; None if neither."""
    if token_file is None:
        return os.environ.get(ADMIN_TOKEN_ENV) or None
    from micro_rm.data.readers import read_text

    lines = read_text(token_file, "--admin-token-file").strip().splitlines()
    if not lines:
        raise MicroRMError(f"--admin-token-file {Path(token_file)}: the file is empty; put the token on its first line")
    return lines[0].strip()
