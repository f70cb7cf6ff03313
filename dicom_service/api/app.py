"""FastAPI application factory."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from dicom_service import __version__
from dicom_service.api.audit_middleware import AuditMiddleware
from dicom_service.api.auth import AuthConfig
from dicom_service.api.errors import validation_error
from dicom_service.api.routers import (
    audit,
    corrections,
    frames,
    health,
    implant_corrections,
    instances,
    jobs,
    me,
    metrics,
    studies,
    ui,
)

log = logging.getLogger(__name__)


def create_app(service, *, manage_service: bool = True) -> FastAPI:  # noqa: ANN001 - Service
    """Build the API around a :class:`dicom_service.service.Service`.

    Parameters
    ----------
    service : Service
        The node's services; the app reads settings, queue and readiness from it.
    manage_service : bool
        If True the app's lifespan starts the service and stops it on shutdown, so
        that ``uvicorn`` (and its Ctrl-C handling) drives the whole process.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            service.start()
        try:
            yield
        finally:
            if manage_service:
                service.stop()

    app = FastAPI(
        title="Dental AI DICOM node",
        version=__version__,
        description="Jobs, health and doctor-in-the-loop corrections of the dental imaging AI node. "
        "Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    http = service.settings.http
    app.state.service = service
    app.state.frame_slots = threading.BoundedSemaphore(frames.FRAME_SLOTS)
    app.state.auth = AuthConfig.from_settings(http, service.api_tokens)
    app.add_middleware(AuditMiddleware, trail=lambda: service.audit)
    if http.auth_disabled:
        log.warning("HTTP AUTHENTICATION IS DISABLED (http.auth_disabled): anyone who can reach "
                    "port %d can control jobs. Development use only.", http.port)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(corrections.router)
    app.include_router(implant_corrections.router)
    app.include_router(implant_corrections.findings_router)
    app.include_router(studies.router)
    app.include_router(metrics.router)
    app.include_router(instances.router)
    app.include_router(frames.router)
    app.include_router(ui.router)
    app.include_router(me.router)
    app.include_router(audit.router)
    return app
