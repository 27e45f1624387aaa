"""Users: the admin creates them (and their tokens) and lists them; a user or the admin reads or
deletes a user's state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status

from micro_rm.online.hedge import feedback_weights
from micro_rm.serve.auth import Principal, check_acts_as, require_admin, require_principal
from micro_rm.serve.deps import get_scorer, get_settings, get_store, get_token_store
from micro_rm.serve.schemas import CreatedUser, CreateUserRequest, DeletedUser, UserInfo, UserPath
from micro_rm.serve.settings import ServeSettings

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", response_model=CreatedUser, status_code=status.HTTP_201_CREATED)
def create_user(body: CreateUserRequest, _: Principal = Depends(require_admin),
                tokens: Any = Depends(get_token_store)) -> CreatedUser:
    """Create a user and its bearer token (admin only). The token is shown only in this answer."""
    return CreatedUser(user_id=body.user_id, token=tokens.create(body.user_id))


@router.post("/{user_id}/token", response_model=CreatedUser)
def rotate_token(user_id: str = UserPath, _: Principal = Depends(require_admin),
                 tokens: Any = Depends(get_token_store)) -> CreatedUser:
    """Issue a new token for an existing user (admin only); the old one is refused by every
    replica as soon as this returns. 404 for a user without a token (`POST /users` creates one)."""
    return CreatedUser(user_id=user_id, token=tokens.rotate(user_id))


@router.get("", response_model=list[str])
def list_users(_: Principal = Depends(require_admin), tokens: Any = Depends(get_token_store),
               store: Any = Depends(get_store)) -> list[str]:
    """Every user with a token or with state (admin only)."""
    return sorted(set(tokens.list_users()) | set(store.list_users()))


@router.get("/{user_id}", response_model=UserInfo)
def get_user(user_id: str = UserPath, principal: Principal = Depends(require_principal),
             settings: ServeSettings = Depends(get_settings), store: Any = Depends(get_store),
             tokens: Any = Depends(get_token_store), scorer: Any = Depends(get_scorer)) -> UserInfo:
    """A user's Hedge state: S_u, the feedback count and the weights under a uniform prior."""
    check_acts_as(principal, user_id)
    has_token = tokens.exists(user_id)
    state = store.get(user_id, missing_ok=True)
    if not has_token and state.num_feedback == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown user {user_id!r}")
    return UserInfo(user_id=user_id, num_feedback=state.num_feedback,
                    cumulative_loss=state.cumulative_loss.tolist(),
                    feedback_weights=feedback_weights(state.cumulative_loss, settings.eta,
                                                      scorer.model.config.masked_heads).tolist(),
                    has_token=has_token, model_id=store.model_id, eta=settings.eta)


@router.delete("/{user_id}", response_model=DeletedUser)
def delete_user(user_id: str = UserPath, principal: Principal = Depends(require_principal),
                store: Any = Depends(get_store), tokens: Any = Depends(get_token_store)) -> DeletedUser:
    """Forget a user for good: its token, its state, its feedback log and its Idempotency-Keys
    (the user itself or the admin). Feedback still in flight when this returns is refused (409),
    never applied: the token is revoked first, then the state goes in a transaction that moves
    the user's epoch."""
    check_acts_as(principal, user_id)
    revoked = tokens.revoke(user_id)
    count = store.delete_user(user_id)
    if count is None and not revoked:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown user {user_id!r}")
    return DeletedUser(user_id=user_id, deleted_feedback=count or 0, token_revoked=revoked)
