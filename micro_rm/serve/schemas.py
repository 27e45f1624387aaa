"""Request and response bodies of the service (pydantic), shown in the OpenAPI docs at ``/docs``.

Texts are a string or a list of chat messages, as in the pair record. Size limits depend on the
settings, so the scoring engine checks them per request (:mod:`micro_rm.scoring.limits`), not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from micro_rm.data.records import USER_ID_PATTERN, USER_ID_RULE

UserId = Annotated[str, Field(pattern=USER_ID_PATTERN, description=USER_ID_RULE + ".",
                              examples=["ana"])]
UserPath = Path(pattern=USER_ID_PATTERN, description="The user id.")   # {user_id} in a route


class StrictModel(BaseModel):
    """A request body that refuses unknown fields (422 naming them)."""

    model_config = ConfigDict(extra="forbid")


class ChatMessage(StrictModel):
    role: str
    content: str


TextIn = Union[str, list[ChatMessage]]
Context = Annotated[str, Field(min_length=1, description="What is known of the user's intent "
                               "(criterion, persona, instruction); read by the router.")]


def as_text(value: TextIn) -> Any:
    """A request text as the backbones take it: a string or a list of message dicts."""
    return value if isinstance(value, str) else [m.model_dump() for m in value]


# ----- errors -------------------------------------------------------------------------------
class ValidationProblem(BaseModel):
    loc: list[Union[str, int]] = Field(description="Where: `body`, then the field path.")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error answer (4xx, 503): ``detail`` is one line saying what is wrong, where, and the fix; a
    request that does not match the schema (422) lists each problem, with ``message`` naming
    the first in one line."""

    detail: Union[str, list[ValidationProblem]]
    message: Optional[str] = Field(None, description="With a list `detail`: the first problem in one line.")


ERROR_RESPONSES: dict[Union[int, str], dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (400, "Malformed request (e.g. an invalid Content-Length)."),
        (401, "Missing or invalid bearer token."),
        (403, "The token may not act for this user, or the call needs the admin token."),
        (404, "Unknown user."),
        (408, "The request body was not received within the body timeout, 30 s by default (the connection is closed)."),
        (409, "Conflict: the user exists already; the user was deleted (deletion is final until POST "
              "/users re-creates it); an Idempotency-Key wrote to a user since deleted or is still being "
              "applied; or the user's stored state is damaged (not finite)."),
        (413, "Request body or text count over the limits."),
        (422, "Invalid request: the detail names the field and the fix (also: the model gave no finite "
              "reward for a sample)."),
        (503, "The state database cannot be used (damaged, unreachable), or the backbone failed on "
              "this request's texts even alone; the detail names the cause."),
    )}


# ----- scoring ------------------------------------------------------------------------------
class ScoreRequest(StrictModel):
    prompt: TextIn = Field(examples=["How do I sort a list in Python?"])
    responses: list[TextIn] = Field(min_length=1, examples=[["Use sorted(xs).", "You can't."]])
    context: Optional[Context] = None
    user_id: Optional[UserId] = Field(None, description="Score with this user's adapted weights "
                                      "(needs that user's token or the admin token).")


class ResponseScore(BaseModel):
    reward: float = Field(description="Σ_k w_k r_k: the routed reward.")
    head_rewards: list[float] = Field(description="r_k of each head.")


class ScoreResponse(BaseModel):
    scores: list[ResponseScore]
    ranking: list[int] = Field(description="Indices of `responses`, best first.")
    weights: list[float] = Field(description="The weights w used: router prior ⊙ exp(−η S_u), normalised.")
    prior_weights: list[float] = Field(description="The router's weights alone.")
    user_id: Optional[str] = None
    num_feedback: int = Field(0, description="Feedback pairs behind the user's weights.")


class CompareRequest(StrictModel):
    prompt: TextIn
    a: TextIn
    b: TextIn
    context: Optional[Context] = None
    user_id: Optional[UserId] = None


class CompareResponse(BaseModel):
    p_a_beats_b: float = Field(description="Σ_k w_k σ(r_k(a) − r_k(b)).")
    head_probs: list[float] = Field(description="σ(r_k(a) − r_k(b)) of each head.")
    weights: list[float]
    prior_weights: list[float]
    user_id: Optional[str] = None
    num_feedback: int = 0


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward request: ``query``, ``prompts`` and ``labels`` (its
    ``--label_key`` column), plus micro-rm's optional ``context`` / ``user_id``."""

    model_config = ConfigDict(extra="allow")   # other fields OpenRLHF sends are ignored
    query: list[str] = Field(min_length=1, description="prompt + response texts, as OpenRLHF sends them.")
    prompts: Optional[list[str]] = Field(None, description="The prompt of each query (OpenRLHF "
                                         "sends them): the response is the text after the first "
                                         "occurrence of the prompt in its query.")
    separator: Optional[str] = Field(None, min_length=1, description="Without `prompts`: split each "
                                     "query at the last occurrence of this string (e.g. the chat "
                                     "template's assistant header).")
    context: Optional[Union[Context, list[Optional[str]]]] = Field(None, description="One context "
                                                                   "for all queries, or one per query.")
    user_id: Optional[UserId] = None
    labels: Optional[list[Any]] = Field(None, description="One label per query (OpenRLHF's "
                                        "`--label_key` column). What it carries is a server "
                                        "option, `--labels`: ignore, context, user_id or json "
                                        '({"context": ..., "user_id": ...}).')


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float] = Field(description="The rewards again: OpenRLHF reads `scores` for "
                                "dynamic filtering.")
    extra_logs: dict[str, list[float]] = Field(description="Per query: each head's reward "
                                               "(`head{k}_reward`) and weight (`head{k}_weight`); "
                                               "OpenRLHF logs them.")


# ----- feedback -----------------------------------------------------------------------------
class FeedbackItem(StrictModel):
    user_id: Optional[UserId] = Field(None, description="Defaults to the token's user.")
    prompt: Optional[TextIn] = Field(None, description="May be omitted when chosen/rejected are "
                                     "whole conversations (their shared prefix is the prompt).")
    chosen: TextIn
    rejected: TextIn
    context: Optional[Context] = None


class UserWeights(BaseModel):
    user_id: str
    num_feedback: int
    cumulative_loss: list[float] = Field(description="S_u: each head's summed scaled loss.")
    feedback_weights: list[float] = Field(description="normalise(exp(−η S_u)): the user's weights "
                                          "under a uniform router prior.")
    weights: Optional[list[float]] = Field(None, description="The weights for the last feedback "
                                           "pair's context and prompt: router prior ⊙ exp(−η S_u).")


class FeedbackResponse(BaseModel):
    accepted: int
    users: list[UserWeights]


# ----- users --------------------------------------------------------------------------------
class CreateUserRequest(StrictModel):
    user_id: UserId


class CreatedUser(BaseModel):
    user_id: str
    token: str = Field(description="Shown once; only its SHA-256 is stored.")


class UserInfo(UserWeights):
    has_token: bool
    model_id: str
    eta: float


class DeletedUser(BaseModel):
    user_id: str
    deleted_feedback: int
    token_revoked: bool
