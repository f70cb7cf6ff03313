"""Studies the node holds: list, inspect, remove (``retention.py`` decides what may go)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, NoReturn

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel

from dicom_service.api.auth import AdminOnly, Authenticated
from dicom_service.api.params import Limit, Offset
from dicom_service.domain import JobState
from dicom_service.retention import StudyBusy, remove_study, study_jobs
from dicom_service.storage import InstanceStore, StudySummary

router = APIRouter(prefix="/studies", tags=["studies"], dependencies=[Authenticated])

StudyUid = Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$", description="Study Instance UID.")]


@dataclass(frozen=True)
class StudyOut(StudySummary):
    """A study as the API shows it: :class:`StudySummary` with its jobs counted by state."""

    jobs: dict[JobState, int] = field(default_factory=dict)


class RemovedOut(BaseModel):
    study_uid: str
    reason: str
    removed_at: float
    instances: int
    results: int
    bytes: int


def _out(summary: StudySummary, jobs: dict[JobState, int] | None = None) -> StudyOut:
    return StudyOut(**vars(summary), jobs=jobs or {})


@router.get("", response_model=list[StudyOut], summary="Studies held, the most recently received first")
def list_studies(
    request: Request,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[StudyOut]:
    store = request.app.state.service.store
    return [_out(s) for s in store.studies(limit=limit, offset=offset)]


@router.get("/{study_uid}", response_model=StudyOut, summary="One study, with its jobs counted by state",
            responses={404: {"description": "Not held"}, 410: {"description": "Removed (retention or a delete)"}})
def get_study(request: Request, study_uid: StudyUid) -> StudyOut:
    service = request.app.state.service
    found = service.store.studies(study_uid=study_uid, limit=1)
    if not found:
        _not_held(service.store, study_uid)
    counts: dict[JobState, int] = {}
    for job in study_jobs(service.queue, study_uid).jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return _out(found[0], counts)


@router.delete("/{study_uid}", response_model=RemovedOut, dependencies=[AdminOnly],
               summary="Remove a study's instances and results from the node (its jobs stay as records)",
               responses={403: {"description": "A dentist's token: removing studies is an administrator's"},
                          404: {"description": "Not held"}, 409: {"description": "A job is not finished, or "
                          "results are undelivered (discard_undelivered=true removes them anyway)"},
                          410: {"description": "Already removed"}})
def delete_study(request: Request, study_uid: StudyUid, discard_undelivered: bool = False) -> RemovedOut:
    service = request.app.state.service
    if not service.store.studies(study_uid=study_uid, limit=1):
        _not_held(service.store, study_uid)
    try:
        report = remove_study(service.store, service.queue, study_uid, reason="deleted through the API",
                              discard_undelivered=discard_undelivered)
    except StudyBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"study {study_uid} not removed: {exc}") from None
    return RemovedOut(study_uid=report.study_uid, reason=report.reason, removed_at=report.purged_at,
                      instances=report.instances, results=report.results, bytes=report.bytes)


def _not_held(store: InstanceStore, study_uid: str) -> NoReturn:
    removed = store.purged(study_uid)
    if removed is not None:
        raise HTTPException(status.HTTP_410_GONE, f"study {study_uid} was removed ({removed.reason}) at "
                            f"{removed.purged_at:.0f} (epoch seconds)")
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_uid} is not held by this node")
