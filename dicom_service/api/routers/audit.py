"""``GET /audit``: the audit trail (:mod:`dicom_service.audit`) for an administrator.

The rows ``dicom-service audit`` prints, filtered the same way, for an administrator's
token (a named user with role ``admin``, or a service token); a dentist's token gets 403.
The request is itself recorded. Rows hold UIDs, AE titles, addresses and staff names,
never patient data.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from dicom_service.api.auth import AdminOnly
from dicom_service.audit import KINDS, AuditReadError, as_trail_time, read_events

router = APIRouter(tags=["audit"], dependencies=[AdminOnly])

Kind = Literal[KINDS]  # type: ignore[valid-type]


def _utc(value: str | None, name: str) -> str | None:
    """``since`` / ``until`` as the trail writes times; 422 for anything else."""
    try:
        return None if value is None else as_trail_time(value)
    except ValueError as error:
        raise HTTPException(422, f"{name}: {error}") from None


@router.get("/audit", summary="The audit trail: who did what with which study (administrators)",
            responses={403: {"description": "A dentist's token"}, 422: {"description": "A bad filter"}})
def audit_rows(request: Request, response: Response,
               since: Annotated[str | None, Query(max_length=40, description="Rows at or after (ISO 8601, UTC "
                                                                              "when no zone)")] = None,
               until: Annotated[str | None, Query(max_length=40, description="Rows before (ISO 8601)")] = None,
               actor: Annotated[str | None, Query(max_length=64)] = None,
               study_uid: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")] = None,
               kind: Kind | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[dict[str, Any]]:
    """The newest ``limit`` rows that match, oldest first (as ``dicom-service audit``)."""
    service = request.app.state.service
    if service.audit is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is not started")
    service.audit.flush(timeout=2.0)  # the rows of requests already answered
    response.headers["Cache-Control"] = "no-store"
    try:
        return read_events(service.audit.path, since=_utc(since, "since"), until=_utc(until, "until"), actor=actor,
                           study_uid=study_uid, kind=kind, limit=limit)
    except (AuditReadError, FileNotFoundError) as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from error
