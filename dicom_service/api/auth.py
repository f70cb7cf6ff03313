"""Bearer-token authentication for the HTTP API."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="A token from http.tokens in the configuration.")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Dependency: 401 unless the request carries one of the configured tokens."""
    auth = request.app.state.auth
    if auth.disabled:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, t.encode()) for t in auth.tokens):
        log.warning("HTTP request with an unknown token refused (%s %s)", request.method, request.url.path)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


Authenticated = Depends(require_token)
