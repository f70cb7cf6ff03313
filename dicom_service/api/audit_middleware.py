"""An ASGI middleware that writes each API request about patients' data to the audit trail.

Requests under :data:`AUDITED_PREFIXES` get one ``http`` row each
(:mod:`dicom_service.audit`) once their response has started (or failed): the caller that
:func:`~dicom_service.api.auth.require_token` left in the request's state, or the holder
of the request's token for a request answered before authentication (a 404, 405, 422),
``unauthenticated`` when the token was missing or refused; the client's address, the
route (``GET /instances/{sop_instance_uid}``), the status, and the study, instance and job
of the path, of the ``sop_instance_uid`` query parameter, or of what the endpoint names
with :func:`audit_subject` (a correction's instance, study and job). Health, metrics and
the pages' static files are not recorded. The row is queued
(:meth:`~dicom_service.audit.AuditTrail.record`), never waited on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from dicom_service.api.auth import CALLER_STATE, UNAUTHENTICATED, AuthConfig, Caller
from dicom_service.audit import AuditEvent, AuditTrail

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths whose requests are recorded (each and everything under it).
AUDITED_PREFIXES = ("/studies", "/instances", "/corrections", "/jobs", "/me", "/audit")
#: Where :func:`audit_subject` leaves what an endpoint names (in ``request.state``).
SUBJECT_STATE = "audit_subject"


def audit_subject(request: Request, *, study_uid: str | None = None, sop_instance_uid: str | None = None,
                  job_id: int | None = None, **detail: Any) -> None:
    """Name what request ``request`` concerns, for its audit row (beyond its path):
    ``detail`` goes into the row's ``detail`` (JSON values: UIDs and counts, never
    patient data)."""
    subject = dict(getattr(request.state, SUBJECT_STATE, {}) or {})
    for key, value in (("study_uid", study_uid), ("sop_instance_uid", sop_instance_uid), ("job_id", job_id)):
        if value is not None:
            subject[key] = value
    subject["detail"] = {**subject.get("detail", {}), **detail}
    setattr(request.state, SUBJECT_STATE, subject)


def _audited(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in AUDITED_PREFIXES)


#: Longest text kept of a request's path or of a UID taken from it (a longer one is cut).
MAX_PATH_CHARS = 512
MAX_UID_CHARS = 64
#: Largest id or frame number kept as a number (SQLite's integers are 64-bit).
MAX_NUMBER = 2**63 - 1


def _number(value: object) -> int | None:
    """``value`` as a whole number if it is one that fits; else None."""
    text = str(value)
    if not (text.isascii() and text.isdecimal()):
        return None
    number = int(text)
    return number if number <= MAX_NUMBER else None


def _uid(value: object) -> str | None:
    return None if value is None else str(value)[:MAX_UID_CHARS]


def _actor(scope: Scope) -> str:
    """Who made the request: the caller :func:`require_token` left, else the holder of the
    request's bearer token (a request answered before authentication: a 404, 405, 422 or
    redirect), else ``unauthenticated`` (no token, or one refused)."""
    caller = (scope.get("state") or {}).get(CALLER_STATE)
    if isinstance(caller, Caller):
        return caller.label
    app = scope.get("app")
    auth = getattr(getattr(app, "state", None), "auth", None)
    if not isinstance(auth, AuthConfig):
        return "unauthenticated"
    if auth.disabled:
        return UNAUTHENTICATED.label
    for name, value in scope.get("headers") or []:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            found = auth.caller(token.strip()) if scheme.lower() == b"bearer" else None
            return found.label if found is not None else "unauthenticated"
    return "unauthenticated"


def _event(scope: Scope, status: int) -> AuditEvent:
    """The row of the request ``scope`` answered with ``status``."""
    state = scope.get("state") or {}
    route = scope.get("route")
    template = getattr(route, "path", None) or scope.get("path", "")
    params = dict(scope.get("path_params") or {})
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    subject = dict(state.get(SUBJECT_STATE) or {})
    study = subject.get("study_uid") or params.get("study_uid")
    sop = subject.get("sop_instance_uid") or params.get("sop_instance_uid") or (query.get("sop_instance_uid")
                                                                                or [None])[0]
    job = subject.get("job_id", params.get("job_id"))
    client = scope.get("client")
    detail: dict[str, Any] = {"path": str(scope.get("path", ""))[:MAX_PATH_CHARS], **subject.get("detail", {})}
    if "frame" in params:
        frame = _number(params["frame"])
        detail["frame"] = frame if frame is not None else str(params["frame"])[:MAX_UID_CHARS]
    return AuditEvent(kind="http", actor=_actor(scope), action=f"{scope.get('method', '')} {template}"[:MAX_PATH_CHARS],
                      outcome=str(status), client=client[0] if client else "", study_uid=_uid(study),
                      sop_instance_uid=_uid(sop), job_id=None if job is None else _number(job), detail=detail)


def _fallback(scope: Scope, status: int) -> AuditEvent:
    """A row of what surely reads, for a request whose full row could not be made."""
    return AuditEvent(kind="http", actor="unknown", action=str(scope.get("method", "")), outcome=str(status),
                      detail={"path": repr(scope.get("path", ""))[:MAX_PATH_CHARS], "row": "incomplete"})


class AuditMiddleware:
    """Record each audited request (module docstring) in ``trail()``'s trail.

    Parameters
    ----------
    app : ASGI app
    trail : callable
        Returns the running service's :class:`~dicom_service.audit.AuditTrail`, or None
        before it has started (then nothing is recorded).
    """

    def __init__(self, app: ASGIApp, trail: Callable[[], AuditTrail | None]) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _audited(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            trail = self.trail()
            if trail is not None:  # queued, never waited on (AuditTrail.record)
                try:
                    event = _event(scope, status)
                except Exception:  # noqa: BLE001 - an odd request still leaves a row
                    log.warning("audit trail: a request's row could not be made in full")
                    event = _fallback(scope, status)
                trail.record(event)
