"""Jobs: list, inspect (with per-attempt logs), retry, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel

from dicom_service.api.audit_middleware import audit_subject
from dicom_service.api.auth import Authenticated
from dicom_service.api.params import SQLITE_MAX_INT, Limit, Offset
from dicom_service.domain import Job, JobKind, JobState
from dicom_service.jobs.queue import JobNotFound, JobStateConflict

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authenticated])

JobId = Annotated[int, Path(ge=1, le=SQLITE_MAX_INT, description="The job's id.")]


class AttemptOut(BaseModel):
    number: int
    started_at: float
    finished_at: float | None
    ok: bool | None
    error: str | None
    log: str


class JobOut(BaseModel):
    id: int
    kind: JobKind
    study_uid: str
    workflow: str | None
    state: JobState
    attempts: int
    max_attempts: int
    not_before: float
    created_at: float
    updated_at: float
    error: str | None
    payload: dict
    result: dict | None = None
    attempt_log: list[AttemptOut] = []


def _out(job: Job, result: dict | None = None) -> JobOut:
    return JobOut(
        id=job.id, kind=job.kind, study_uid=job.study_uid,
        workflow=job.workflow.value if job.workflow else None, state=job.state,
        attempts=job.attempts, max_attempts=job.max_attempts, not_before=job.not_before,
        created_at=job.created_at, updated_at=job.updated_at, error=job.error, payload=job.payload,
        result=result,
        attempt_log=[AttemptOut(**vars(a)) for a in job.attempt_log],
    )


@router.get("", response_model=list[JobOut], summary="List jobs, newest first")
def list_jobs(
    request: Request,
    state: JobState | None = None,
    kind: JobKind | None = None,
    study_uid: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9.]+$")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[JobOut]:
    queue = request.app.state.service.queue
    return [_out(j) for j in queue.list(state=state, kind=kind, study_uid=study_uid,
                                        limit=limit, offset=offset)]


@router.get("/{job_id}", response_model=JobOut, summary="One job with its attempts and their logs",
            responses={404: {"description": "No such job"}})
def get_job(request: Request, job_id: JobId) -> JobOut:
    queue = request.app.state.service.queue
    job = queue.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    audit_subject(request, study_uid=job.study_uid or None)
    return _out(job, queue.result(job_id))


def _transition(request: Request, job_id: int, action: str) -> JobOut:
    queue = request.app.state.service.queue
    found = queue.get(job_id)
    if found is not None:  # whose study's job was retried or cancelled, in the audit trail
        audit_subject(request, study_uid=found.study_uid or None)
    try:
        job = queue.retry(job_id) if action == "retry" else queue.cancel(job_id)
    except JobNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found") from None
    except JobStateConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot {action}: {exc}") from None
    return _out(job)


@router.post("/{job_id}/retry", response_model=JobOut,
             summary="Queue a failed, dead or cancelled job again",
             responses={404: {"description": "No such job"}, 409: {"description": "Job not retryable"}})
def retry_job(request: Request, job_id: JobId) -> JobOut:
    return _transition(request, job_id, "retry")


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or running job",
             responses={404: {"description": "No such job"}, 409: {"description": "Job already finished"}})
def cancel_job(request: Request, job_id: JobId) -> JobOut:
    return _transition(request, job_id, "cancel")
