"""Bearer-token auth: one admin token (from the settings), who may act for any user, and one token
per user (:mod:`micro_rm.serve.tokens`), who may act only as itself. No token: 401 (unless
``--anonymous-scoring``, for scoring without a user); a token acting for someone else: 403.
The dependencies are ``async``: a check is one hash and one indexed read, no thread-pool hop.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from micro_rm.serve.deps import get_settings, get_token_store
from micro_rm.serve.settings import ServeSettings

_bearer = HTTPBearer(auto_error=False, description="An admin token or a user token from POST /users.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, or one user with its epoch when the token was checked."""

    user_id: Optional[str]
    admin: bool = False
    epoch: Optional[int] = None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


async def get_principal(credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer),
                  settings: ServeSettings = Depends(get_settings),
                  tokens: Any = Depends(get_token_store)) -> Optional[Principal]:
    """The caller, or None without an ``Authorization: Bearer`` header; a wrong token is 401."""
    if credentials is None:
        return None
    token = credentials.credentials
    if settings.admin_token and hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                                    settings.admin_token.encode("utf-8")):
        return Principal(None, admin=True)
    found = tokens.lookup(token)
    if found is None:
        raise _unauthorized("invalid bearer token")
    return Principal(found[0], epoch=found[1])


async def require_principal(principal: Optional[Principal] = Depends(get_principal)) -> Principal:
    """Any valid token (401 without one)."""
    if principal is None:
        raise _unauthorized("missing bearer token: send `Authorization: Bearer TOKEN` "
                            "(a user token from POST /users, or the admin token)")
    return principal


async def require_admin(principal: Principal = Depends(require_principal)) -> Principal:
    """The admin token (403 for a user token)."""
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this needs the admin token")
    return principal


async def scoring_principal(principal: Optional[Principal] = Depends(get_principal),
                      settings: ServeSettings = Depends(get_settings)) -> Optional[Principal]:
    """Any valid token, or nobody when the server was started with ``--anonymous-scoring``."""
    if principal is None and not settings.anonymous_scoring:
        return await require_principal(None)
    return principal


def check_acts_as(principal: Optional[Principal], user_id: str) -> None:
    """403 unless ``principal`` may read or write ``user_id``'s state."""
    if principal is None:
        raise _unauthorized(f"user_id {user_id!r} needs that user's bearer token")
    if not (principal.admin or principal.user_id == user_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"this token belongs to user {principal.user_id!r}; it may not "
                                   f"read or write user {user_id!r}")
