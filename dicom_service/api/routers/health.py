"""Liveness and readiness probes (no authentication, no patient data)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: DICOM node listening, storage above its floor, workers alive",
            responses={503: {"description": "Not ready; `checks` says which part is not"}})
def readyz(request: Request) -> JSONResponse:
    checks = request.app.state.service.readiness()
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
