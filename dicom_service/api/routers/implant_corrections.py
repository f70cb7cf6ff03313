"""Doctor-in-the-loop on radiographs: a dentist reviews the implants the AI found.

``POST /corrections/implants`` names a radiograph the radiograph workflow has processed
and lists the implants as the dentist sees them: AI findings kept by their number (as the
AI's report and boxes label them, from 1), optionally with the system the dentist knows,
and boxes around implants the AI missed, whose system the node's identifier names unless
the dentist does. AI findings left out are false alarms; an empty list says there is no
implant. A ``correct`` job (:mod:`dicom_service.jobs.implant_correction`) writes a
corrected report, presentation state, Segmentation and burned-in capture beside the AI's
and sends them where the workflow's results go; the request waits for it up to ``wait``
seconds (201 with the objects, else 202 with the job to follow). The same review by the
same person is the same job; the objects carry the reviewer's name when their token is
their own (``http.users``). ``GET`` lists a radiograph's reviews, newest first.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dicom_service.api.audit_middleware import audit_subject
from dicom_service.api.auth import Authenticated, CurrentCaller
from dicom_service.api.routers.corrections import (
    Coordinate,
    ToothCorrectionAccepted,
    correction_job,
    finished_or_accepted,
    processing_job,
    stored_instance,
)
from dicom_service.domain import InputError, Workflow
from dicom_service.jobs.implant_correction import (
    implant_review_key,
    implant_review_payload,
    reported_entry,
    reviews_of,
)
from dicom_service.pipelines.implant_correction import (
    MAX_IMPLANTS,
    SYSTEM_NAME_PATTERN,
    ImplantEdit,
    ImplantReview,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/corrections", tags=["corrections"], dependencies=[Authenticated])
#: ``GET /instances/{sop}/implants``: what the AI found, for a page to show before a review.
findings_router = APIRouter(prefix="/instances", tags=["instances"], dependencies=[Authenticated])



class ImplantIn(BaseModel):
    """One implant as the dentist sees it: an AI finding kept, or a box drawn."""

    model_config = ConfigDict(extra="forbid")

    finding: int | None = Field(None, ge=1, strict=True, description=(
        "Number of the AI's finding to keep (its report's 'Implant <n>', the label '#<n>' of its boxes)."))
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(None, description=(
        "x0, y0, x1, y1 in pixels of the radiograph (x = column, y = row) around an implant the AI missed."))
    system: str | None = Field(None, min_length=1, max_length=64, pattern=SYSTEM_NAME_PATTERN, description=(
        "The implant system as the dentist knows it (printable ASCII, no backslash, no space at either end); "
        "omitted: the AI's, or for a drawn box the identifier's."))

    @model_validator(mode="after")
    def _one(self) -> ImplantIn:
        if (self.finding is None) == (self.box is None):
            raise ValueError("give either finding (the AI's number) or box")
        return self


class ImplantReviewIn(BaseModel):
    """The implants on one processed radiograph, as the dentist sees them."""

    model_config = ConfigDict(extra="forbid")

    sop_instance_uid: str = Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                                  description="The radiograph (as stored on the node).")
    implants: list[ImplantIn] = Field(max_length=MAX_IMPLANTS, description=(
        "Every implant on the image: AI findings left out are dropped as false alarms; [] says there is none."))

    def review(self, operator: str | None) -> ImplantReview:
        return ImplantReview(implants=tuple(ImplantEdit(finding=i.finding, box=i.box, system=i.system)
                                            for i in self.implants), operator=operator)


class ReviewedImplantOut(BaseModel):
    """One implant of the corrected results."""

    box_xyxy: list[float]
    origin: str = Field(description="ai: the AI's finding, kept; person: a box the dentist drew.")
    score: float | None = Field(description="The AI's certainty (null for a drawn box).")
    parts: list[str]
    attributes: dict[str, str]
    system_top: list[tuple[str, float | None]] = Field(description=(
        "Systems, best first, with probabilities; one with null when the dentist named it."))
    system_by_person: bool


class ObjectOut(BaseModel):
    """One corrected object, kept with the processing job's results."""

    sop_instance_uid: str
    series_instance_uid: str
    path: str


class ImplantReviewOut(BaseModel):
    """The corrected objects of a review and what they hold."""

    correction_job: int = Field(description="The job that made them (see /jobs/{id}).")
    job_id: int = Field(description="The processing job whose results they join.")
    sop_instance_uid: str = Field(description="The radiograph.")
    operator: str | None = Field(description="Who reviewed (a named user's name, DICOM PN), or null.")
    description: str
    implants: list[ReviewedImplantOut]
    objects: dict[str, ObjectOut] = Field(description="sr, pr, sc, and seg when an implant remains.")
    dispatch_jobs: list[int]


@router.post("/implants", response_model=ImplantReviewOut, status_code=status.HTTP_201_CREATED,
             summary="Review the implants the AI found on a radiograph: keep, drop, add, name the system",
             responses={202: {"model": ToothCorrectionAccepted,
                              "description": "Queued or running after `wait` seconds: follow /jobs/{correction_job}"},
                        404: {"description": "Unknown radiograph"},
                        409: {"description": "Not processed by the radiograph workflow, or the review job was "
                                             "cancelled while the request waited"},
                        422: {"description": "Bad request: an unknown finding number, a box off the image, ..."},
                        500: {"description": "The review job failed for another reason (see its log)"}})
def review_implants(request: Request, body: ImplantReviewIn, caller: CurrentCaller,
                    wait: Annotated[float, Query(ge=0, le=600, description=(
                        "Seconds to wait for the result before answering 202"))] = 30.0,
                    ) -> ImplantReviewOut | JSONResponse:
    audit_subject(request, sop_instance_uid=body.sop_instance_uid)
    service, meta = stored_instance(request, body.sop_instance_uid)
    process_job = processing_job(service.queue, meta.study_uid, body.sop_instance_uid, Workflow.RADIOGRAPH)
    review = body.review(caller.name)
    try:
        entry = reported_entry(service.queue, process_job, body.sop_instance_uid)
        review.check(len(entry.get("implants", [])), int(entry.get("rows", 0)), int(entry.get("columns", 0)))
    except InputError as error:
        log.warning("implant review refused: job %d: %s", process_job.id, type(error).__name__)
        raise HTTPException(422, str(error)) from error
    job = correction_job(service.queue, implant_review_key(process_job, review), meta.study_uid,
                         implant_review_payload(body.sop_instance_uid, process_job, review),
                         service.settings.retry.max_attempts, Workflow.RADIOGRAPH)
    audit_subject(request, job_id=job.id)
    done = finished_or_accepted(service.queue, job, wait)
    if isinstance(done, JSONResponse):
        return done
    return ImplantReviewOut(correction_job=done.id, **(service.queue.result(done.id) or {})["implant_review"])


@router.get("/implants", response_model=list[ImplantReviewOut],
            summary="The implant reviews of a processed radiograph, newest first",
            responses={404: {"description": "Unknown radiograph"},
                       409: {"description": "Not processed by the radiograph workflow"}})
def list_implant_reviews(request: Request, sop_instance_uid: Annotated[str, Query(
        max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$", description="The radiograph (as stored on the node).")],
                         ) -> list[ImplantReviewOut]:
    service, meta = stored_instance(request, sop_instance_uid)
    process_job = processing_job(service.queue, meta.study_uid, sop_instance_uid, Workflow.RADIOGRAPH)
    return [ImplantReviewOut(correction_job=job.id, **reply)
            for job, reply in reviews_of(service.queue, process_job, sop_instance_uid)]


class AiImplantOut(BaseModel):
    """One implant the AI reported, by the number a review names it with."""

    finding: int = Field(description="Its number (the AI's report's 'Implant <n>', label '#<n>').")
    box_xyxy: list[float]
    score: float
    parts: list[str]
    attributes: dict[str, str]
    system_top: list[tuple[str, float]]


class AiFindingsOut(BaseModel):
    """What the AI reported for a processed radiograph, and the newest review of it."""

    sop_instance_uid: str
    job_id: int = Field(description="The processing job.")
    rows: int
    columns: int
    algorithm: str
    implants: list[AiImplantOut]
    latest_review: ImplantReviewOut | None = Field(description="The newest review, or null.")
    systems: list[str] = Field(description="The implant systems the node's identifier knows (its catalogue, for "
                               "suggestions: a review may name any other); empty for a runtime without one.")


def known_systems(runtime: object) -> list[str]:
    """The implant systems ``runtime``'s identifier can name (none for the baseline)."""
    identifier = getattr(runtime, "identifier", None)
    return list(getattr(identifier, "systems", ()))


@findings_router.get("/{sop_instance_uid}/implants", response_model=AiFindingsOut,
                     summary="The implants the AI found on a processed radiograph, and its newest review",
                     responses={404: {"description": "Unknown radiograph"},
                                409: {"description": "Not processed by the radiograph workflow"}})
def ai_findings(request: Request, sop_instance_uid: Annotated[str, Path(
        max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$", description="The radiograph (as stored on the node).")],
                ) -> AiFindingsOut:
    service, meta = stored_instance(request, sop_instance_uid)
    process_job = processing_job(service.queue, meta.study_uid, sop_instance_uid, Workflow.RADIOGRAPH)
    try:
        entry = reported_entry(service.queue, process_job, sop_instance_uid)
    except InputError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error
    reviews = reviews_of(service.queue, process_job, sop_instance_uid)
    return AiFindingsOut(
        sop_instance_uid=sop_instance_uid, job_id=process_job.id, rows=int(entry.get("rows", 0)),
        columns=int(entry.get("columns", 0)), algorithm=str(entry.get("algorithm", "")),
        implants=[AiImplantOut(finding=n, box_xyxy=item["box_xyxy"], score=item["score"], parts=item.get("parts", []),
                               attributes=item.get("attributes") or {}, system_top=item.get("system_top") or [])
                  for n, item in enumerate(entry.get("implants", []), start=1)],
        latest_review=ImplantReviewOut(correction_job=reviews[0][0].id, **reviews[0][1]) if reviews else None,
        systems=known_systems(service.runtimes.radiograph if service.runtimes is not None else None))
