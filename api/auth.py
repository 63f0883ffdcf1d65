"""Who is calling and what they may do: a bearer key becomes a Caller, or 400/401/403."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from api.deps import RuntimeDep
from api.keys import ApiKey, Role
from api.schemas import ErrorOut

log = structlog.get_logger(__name__)

REALM = 'Bearer realm="switchyard"'

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="sy_<key id>_<secret>",
    description="An API key from `switchyard keys create`, sent as `Authorization: Bearer <key>`.",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """The key a request was authenticated with; routes record `user_id` as the author."""

    key_id: str
    user_id: str
    role: Role

    @property
    def is_operator(self) -> bool:
        """Operators see every task and may change the rollout."""
        return self.role is Role.OPERATOR

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        """The caller holding `key`."""
        return cls(key_id=key.key_id, user_id=key.user_id, role=key.role)


def log_denied(request: Request, caller: Caller | None, *, status_code: int, reason: str) -> None:
    """The one log event of every refused request, whatever refused it."""
    log.warning(
        "auth.denied",
        status=status_code,
        reason=reason,
        method=request.method,
        path=request.url.path,
        key_id=caller.key_id if caller else None,
        user_id=caller.user_id if caller else None,
        client=request.client.host if request.client else None,
    )


def authenticate(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller whose active key is in the Authorization header; 401 otherwise.

    Two Authorization headers are refused with 400 before either is checked: proxies and
    frameworks disagree on which one counts, so honouring the first could authenticate a
    request as someone other than the hop that added the second meant it to be.
    """
    if len(request.headers.getlist("authorization")) > 1:
        log_denied(request, None, status_code=400, reason="more than one Authorization header")
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "more than one Authorization header: send exactly one `Authorization: Bearer <key>`",
        )
    if credentials is None:
        log_denied(request, None, status_code=401, reason="no bearer key")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": REALM},
        )
    key = runtime.keys.verify(credentials.credentials)
    if key is None:
        log_denied(request, None, status_code=401, reason="unknown, malformed or revoked key")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid API key: unknown, malformed or revoked",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    caller = Caller.of(key)
    request.state.caller = caller  # for the log line of a refusal made further in (a 429)
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


def identify(request: Request, runtime: RuntimeDep) -> Caller | None:
    """The caller of a route that answers without a key too (probes carry none): a missing or
    invalid key is no caller, never a 401. The header is read directly: the route declares
    its optional security itself, which the `bearer` dependency would make mandatory."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        key = runtime.keys.verify(token.strip())
    except SQLAlchemyError:  # the database is down: the route reports that, keyless
        return None
    return Caller.of(key) if key is not None else None


MaybeCallerDep = Annotated[Caller | None, Depends(identify)]

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "More than one Authorization header"},
    401: {"model": ErrorOut, "description": "No API key, or not a valid one"},
}
"""The OpenAPI declaration of what `authenticate` answers, for every route that needs a key."""


async def require_operator(request: Request, caller: CallerDep) -> Caller:
    """The caller if it holds an operator key; 403 (logged) otherwise."""
    if not caller.is_operator:
        log_denied(request, caller, status_code=403, reason="operator role required")
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an operator key")
    return caller


OperatorDep = Annotated[Caller, Depends(require_operator)]
