"""An ASGI middleware that writes each API request about patients' data to the audit trail.

Requests under :data:`AUDITED_PREFIXES` get one ``http`` row each
(:mod:`dicom_service.audit`) once their response has started (or failed): the caller that
:func:`~dicom_service.api.auth.require_token` left in the request's state (``unauthenticated``
when the token was missing or refused), the client's address, the route (``GET
/instances/{sop_instance_uid}``), the status, and the study, instance and job of the path,
of the ``sop_instance_uid`` query parameter, or of what the endpoint names with
:func:`audit_subject` (a correction's instance, study and job). Health, metrics and the
page's static files are not recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request

from dicom_service.api.auth import CALLER_STATE, Caller
from dicom_service.audit import AuditEvent, AuditTrail

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths whose requests are recorded (each and everything under it).
AUDITED_PREFIXES = ("/studies", "/instances", "/corrections", "/jobs", "/me")
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


def _event(scope: Scope, status: int) -> AuditEvent:
    """The row of the request ``scope`` answered with ``status``."""
    state = scope.get("state") or {}
    caller = state.get(CALLER_STATE)
    actor = caller.label if isinstance(caller, Caller) else "unauthenticated"
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
    detail: dict[str, Any] = {"path": scope.get("path", ""), **subject.get("detail", {})}
    if "frame" in params:
        frame = str(params["frame"])
        detail["frame"] = int(frame) if frame.isdigit() else frame
    return AuditEvent(kind="http", actor=actor, action=f"{scope.get('method', '')} {template}", outcome=str(status),
                      client=client[0] if client else "", study_uid=study, sop_instance_uid=sop,
                      job_id=int(job) if isinstance(job, int | str) and str(job).isdigit() else None, detail=detail)


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
            if trail is not None:
                with anyio.CancelScope(shield=True):  # recorded even when the client went away
                    await anyio.to_thread.run_sync(trail.record, _event(scope, status))
