"""Bearer-token authentication for the HTTP API, and who is calling.

Two kinds of token are accepted: service tokens (``http.tokens``, or the one the node keeps
in ``<storage>/api-token``), which name nobody, and the tokens of named people
(``http.users``). :func:`require_token` refuses a request without one of them (401) and
leaves the :class:`Caller` in the request's state, where the corrections read the name
they record and the audit trail (:mod:`dicom_service.api.audit_middleware`) reads who made
the request.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dicom_service.config import HttpSettings

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="A token from http.tokens or http.users in the configuration.")

#: Where :func:`require_token` leaves the :class:`Caller` (``request.state``, shared with
#: the ASGI scope's ``state``, where the audit middleware reads it).
CALLER_STATE = "caller"


@dataclass(frozen=True)
class Caller:
    """Who made a request.

    Attributes
    ----------
    name : str or None
        The person's name (DICOM PN, ``Family^Given^...``) for a named user's token; None
        for a service token or with authentication disabled.
    label : str
        What the audit trail records: the person's name, ``"service token N"`` (1-based
        position in ``http.tokens``; the token itself is never recorded) or ``"auth
        disabled"``.
    role : str
        ``"dentist"`` or ``"admin"`` (a named user's ``role``), ``"service"`` (a service
        token) or ``"disabled"``; all but ``"dentist"`` may do everything
        (:func:`require_admin`).
    """

    name: str | None
    label: str
    role: str = "service"

    @property
    def is_admin(self) -> bool:
        """May remove studies and read the audit trail."""
        return self.role != "dentist"


@dataclass(frozen=True)
class AuthConfig:
    """The accepted tokens, each with its :class:`Caller`, or ``disabled`` for development."""

    tokens: tuple[tuple[bytes, Caller], ...]
    disabled: bool

    @classmethod
    def from_settings(cls, http: HttpSettings, service_tokens: list[str]) -> AuthConfig:
        """The service tokens (``http.tokens`` or the created one) and ``http.users``."""
        tokens = [(t.encode(), Caller(None, f"service token {i}")) for i, t in enumerate(service_tokens, 1)]
        tokens += [(u.token.encode(), Caller(u.name, u.name, u.role)) for u in http.users]
        return cls(tokens=tuple(tokens), disabled=http.auth_disabled)

    def caller(self, given: bytes) -> Caller | None:
        """The holder of token ``given``; None if it is not accepted. Every token is
        compared in constant time, whichever matches."""
        found = None
        for token, caller in self.tokens:
            if hmac.compare_digest(given, token):
                found = caller
        return found


#: The caller when ``http.auth_disabled`` is set.
UNAUTHENTICATED = Caller(None, "auth disabled", "disabled")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Dependency: 401 unless the request carries an accepted token; returns its
    :class:`Caller` and leaves it in ``request.state``."""
    auth: AuthConfig = request.app.state.auth
    if auth.disabled:
        setattr(request.state, CALLER_STATE, UNAUTHENTICATED)
        return UNAUTHENTICATED
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    caller = auth.caller(credentials.credentials.encode())
    if caller is None:
        log.warning("HTTP request with an unknown token refused (%s %s)", request.method, request.url.path)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    setattr(request.state, CALLER_STATE, caller)
    return caller


def require_admin(caller: Annotated[Caller, Depends(require_token)]) -> Caller:
    """Dependency: :func:`require_token`, then 403 for a named user whose role is
    ``dentist`` (what an administrator does: remove studies, read the audit trail)."""
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "an administrator's token is needed (http.users role "
                                                       "admin, or a service token)")
    return caller


Authenticated = Depends(require_token)
#: For the routes only an administrator may use.
AdminOnly = Depends(require_admin)
#: A parameter annotation for endpoints that use the caller (``caller: CurrentCaller``).
CurrentCaller = Annotated[Caller, Depends(require_token)]
