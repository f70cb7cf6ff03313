"""Doctor-in-the-loop: correct the AI's tooth masks with clicks or a box, get an amended SEG.

``POST /corrections/tooth-masks`` names a stored photo or video that the video workflow has
processed, a frame, and the dentist's clicks and/or box on it. What can be checked from the
stored header is checked here (the instance, its processing job, the frame, the prompts,
memory, disk); then a ``correct`` job (:mod:`dicom_service.jobs.correction`) segments that
frame from the prompts, carries the result to the neighbouring frames, writes an amended
tooth Segmentation beside the AI's, keeps it with the processing job's results and queues
it for every destination that receives the workflow's ``seg`` results. The request waits
for the job up to ``wait`` seconds: 201 with the amended Segmentation if it is done, else
202 with the job to follow at ``/jobs/{id}``. The same correction posted again is the same
job (and the same UIDs). With ``based_on`` (an earlier reply's corrected Segmentation) the
correction starts from that Segmentation's masks instead of the AI's, so a dentist fixes
one frame after another and the last Segmentation holds every fix.

With ``restore: true`` the correction job then queues a ``restore`` job
(:mod:`dicom_service.jobs.restore`): the processing workers enhance the photo or video
again with the restoration guided by the corrected masks (seed 000's doctor-in-the-loop
restoration) and send the amended enhanced video and report on. The reply names that job
(``restore_job``); it takes as long as processing the clip did, so it is followed at
``/jobs/{id}``, not waited for. Posting the same correction again puts a restore job that
failed back in the queue.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom import dcmread

from dicom_service.api.audit_middleware import audit_subject
from dicom_service.api.auth import Authenticated, CurrentCaller
from dicom_service.domain import InputError, InstanceMeta, Job, JobKind, JobState, StorageFullError, Workflow
from dicom_service.jobs.correction import (
    corrected_segmentation,
    correction_job_key,
    correction_payload,
    corrections_of,
)
from dicom_service.jobs.processed import processing_jobs
from dicom_service.jobs.queue import JobStateConflict, enqueued_or_existing
from dicom_service.pipelines.correction import (
    CorrectionTooLarge,
    MaskCorrection,
    check_correction_disk,
    check_correction_memory,
)
from dicom_service.pipelines.video_memory import video_budget_bytes
from dicom_service.vision.runtime import restores_with_masks
from dicom_service.vision.tooth_predictor import ToothSegmenter

log = logging.getLogger(__name__)

router = APIRouter(prefix="/corrections", tags=["corrections"], dependencies=[Authenticated])

Coordinate = Annotated[float, Field(allow_inf_nan=False, strict=True)]
#: A click's label: 1 = tooth, 0 = not tooth (strict: JSON true/false or "1" are refused).
Label = Annotated[int, Field(ge=0, le=1, strict=True)]


class ToothCorrectionIn(BaseModel):
    """Clicks and/or a box on one frame of a processed photo or video."""

    model_config = ConfigDict(extra="forbid")

    sop_instance_uid: str = Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                                  description="The source photo or video (as stored on the node).")
    frame: int = Field(0, ge=0, strict=True, description="0-based frame index (0 for a photograph).")
    points: list[tuple[Coordinate, Coordinate]] | None = Field(
        None, max_length=64, description="Clicks, (x, y) in pixels of the frame (0 <= x <= Columns, 0 <= y <= Rows).")
    labels: list[Label] | None = Field(
        None, max_length=64, description="One per click: 1 = tooth, 0 = not tooth.")
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        None, description="x0, y0, x1, y1 in pixels around the teeth, on the frame.")
    radius: int | None = Field(None, ge=0, strict=True, description=(
        "Frames on each side to carry the correction to (omitted: the whole clip; 0: this frame only)."))
    based_on: str | None = Field(None, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$", description=(
        "SOP Instance UID of an earlier corrected Segmentation of this instance (a reply's sop_instance_uid): "
        "the correction builds on its masks, so corrections on several frames accumulate; omitted: on the AI's."))
    restore: bool = Field(False, strict=True, description=(
        "Also enhance the photo or video again with the restoration guided by the corrected masks "
        "(a `restore` job; follow it at /jobs/{id})."))

    @model_validator(mode="after")
    def _prompts(self) -> ToothCorrectionIn:
        if (self.points is None) != (self.labels is None):
            raise ValueError("points and labels go together")
        if self.points is not None and self.labels is not None and len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels")
        if self.points is not None and not self.points:
            raise ValueError("points must not be empty")
        if self.points is None and self.box is None:
            raise ValueError("give clicks (points and labels) or a box")
        return self

    def correction(self) -> MaskCorrection:
        return MaskCorrection(
            frame=self.frame,
            points=None if self.points is None else np.asarray(self.points, dtype=np.float64),
            labels=None if self.labels is None else np.asarray(self.labels, dtype=np.int64),
            box=None if self.box is None else np.asarray(self.box, dtype=np.float64),
            radius=self.radius, based_on=self.based_on)


class ToothCorrectionOut(BaseModel):
    """The amended Segmentation: where it is kept and where it goes."""

    correction_job: int = Field(description="The correction job that made it (see /jobs/{id}).")
    job_id: int = Field(description="The processing job whose results it joins.")
    sop_instance_uid: str
    series_instance_uid: str
    path: str
    frames: int
    corrected_frames: tuple[int, int] = Field(description="First and last frame (0-based) the correction reached.")
    score: float = Field(description="The tooth model's predicted IoU of the corrected frame's mask.")
    tooth_fraction: float = Field(description="Share of the corrected frame that is tooth.")
    dispatch_jobs: list[int]
    based_on: str | None = Field(None, description="The earlier corrected Segmentation it builds on, or null.")
    corrections: int = Field(1, description="Corrections it holds (1 + those of the one it builds on).")
    restore_job: int | None = Field(None, description="The job enhancing the instance again with the corrected "
                                                      "masks (asked for with `restore`), or null.")
    operator: str | None = Field(None, description="Who made the correction (a named user's name, DICOM PN "
                                                   "Family^Given^...; the Segmentation's Content Creator's Name), "
                                                   "or null for a service token.")


class ToothCorrectionAccepted(BaseModel):
    """The correction is queued or running: follow the job."""

    correction_job: int
    state: JobState
    detail: str


def stored_instance(request: Request, sop: str) -> tuple[Any, InstanceMeta]:
    """The running service and the stored instance ``sop``'s index entry (``(service,
    InstanceMeta)``); 503 before the service has started, 404 for an instance not stored
    here. The request's audit row names the instance's study."""
    service = request.app.state.service
    if service.store is None or service.queue is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is not started")
    meta = service.store.instance(sop)
    if meta is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"instance {sop} is not stored here")
    audit_subject(request, study_uid=meta.study_uid)
    return service, meta


def processing_job(queue, study_uid: str, sop: str,  # noqa: ANN001 - JobQueue
                   workflow: Workflow = Workflow.VIDEO) -> Job:
    """The newest succeeded ``workflow`` job that processed instance ``sop``; 409 if there
    is none (naming the state of the newest such job, if one is queued, running or failed)."""
    jobs = processing_jobs(queue, study_uid, sop, workflow)
    for job in jobs:  # newest first
        if job.state is JobState.SUCCEEDED:
            return job
    if jobs:
        raise HTTPException(status.HTTP_409_CONFLICT, f"instance {sop}: its {workflow.value} job {jobs[0].id} is "
                                                      f"{jobs[0].state.value}, not succeeded")
    raise HTTPException(status.HTTP_409_CONFLICT,
                        f"instance {sop} has not been processed by the {workflow.value} workflow")


def _checked(service, path: str, segmenter: ToothSegmenter,  # noqa: ANN001 - Service
             correction: MaskCorrection) -> MaskCorrection:
    """What the stored header tells before any decoding (422, 413 or 507); returns the
    correction for the source's frames (:meth:`MaskCorrection.for_frames`)."""
    header = dcmread(path, stop_before_pixels=True)
    count, rows, columns = max(1, int(header.get("NumberOfFrames", 1) or 1)), int(header.Rows), int(header.Columns)
    workers = service.settings.workers
    correction.check(count, rows, columns)
    check_correction_memory(count, rows, columns, video_budget_bytes(workers.video_memory_mb, workers.processing))
    check_correction_disk(segmenter, count, rows, columns, correction)
    return correction.for_frames(count)


def correction_job(queue, key: str, study_uid: str, payload: dict, attempts: int,  # noqa: ANN001 - JobQueue
                   workflow: Workflow = Workflow.VIDEO) -> Job:
    """The correction job of ``key``: a new one, or the one already queued, running or done
    (put back in the queue if it had failed or was cancelled)."""
    return _requeued(queue, enqueued_or_existing(queue, JobKind.CORRECT, key, study_uid=study_uid,
                                                 workflow=workflow, payload=payload, max_attempts=attempts))


def _requeued(queue, job: Job) -> Job:  # noqa: ANN001 - JobQueue
    """``job`` put back in the queue if it had failed or was cancelled, else as it is (also
    when a request beside this one put it back first, or its cancelled attempt is still
    stopping: then as it is now)."""
    if job.state in (JobState.FAILED, JobState.DEAD, JobState.CANCELLED):
        try:
            return queue.retry(job.id)
        except JobStateConflict:
            return queue.get(job.id) or job
    return job


@router.post("/tooth-masks", response_model=ToothCorrectionOut, status_code=status.HTTP_201_CREATED,
             summary="Correct the tooth masks of a photo or video with clicks or a box",
             responses={202: {"model": ToothCorrectionAccepted,
                              "description": "Queued or running after `wait` seconds: follow /jobs/{correction_job}"},
                        404: {"description": "Unknown instance, or no such corrected Segmentation to build on"},
                        409: {"description": "Not processed by the video workflow, no interactive tooth model, "
                                             "`restore` asked of a runtime that restores without the masks, "
                                             "or the correction job was cancelled while the request waited"},
                        413: {"description": "The clip is too large to correct in the memory allowed"},
                        422: {"description": "Bad request: prompts, frame, or a source that does not decode"},
                        500: {"description": "The correction job failed for another reason (see its log)"},
                        507: {"description": "Not enough disk for the correction's temporary files"}})
def correct_tooth_masks_endpoint(request: Request, body: ToothCorrectionIn, caller: CurrentCaller,
                                 wait: Annotated[float, Query(ge=0, le=600, description=(
                                     "Seconds to wait for the result before answering 202"))] = 30.0,
                                 ) -> ToothCorrectionOut | JSONResponse:
    audit_subject(request, sop_instance_uid=body.sop_instance_uid)
    service, meta = stored_instance(request, body.sop_instance_uid)
    if service.runtimes is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is not started")
    process_job = processing_job(service.queue, meta.study_uid, body.sop_instance_uid)
    runtime = service.runtimes.video
    segmenter = getattr(runtime, "segmenter", None)
    if not isinstance(segmenter, ToothSegmenter):
        raise HTTPException(status.HTTP_409_CONFLICT, f"the video runtime {runtime.info.name!r} has no interactive "
                                                      "tooth model (models.video: learned has one)")
    if body.restore and not restores_with_masks(runtime):
        raise HTTPException(status.HTTP_409_CONFLICT, f"the video runtime {runtime.info.name!r} restores without the "
                                                      "tooth masks, so corrected masks cannot change its video "
                                                      "(models.video: learned restores with them)")
    correction = replace(body.correction(), operator=caller.name)
    if body.based_on is not None and corrected_segmentation(service.queue, process_job, body.sop_instance_uid,
                                                            body.based_on) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no corrected Segmentation {body.based_on} of instance "
                                                       f"{body.sop_instance_uid} here to build on")
    try:
        correction = _checked(service, meta.path, segmenter, correction)
    except CorrectionTooLarge as error:
        log.warning("correction refused (too large): job %d", process_job.id)
        raise HTTPException(413, str(error)) from error
    except InputError as error:
        log.warning("correction refused: job %d: %s", process_job.id, type(error).__name__)
        raise HTTPException(422, str(error)) from error
    except StorageFullError as error:
        log.error("correction refused (disk full): job %d", process_job.id)
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, str(error)) from error
    job = correction_job(service.queue, correction_job_key(process_job, correction, body.restore), meta.study_uid,
                         correction_payload(body.sop_instance_uid, process_job, correction, body.restore),
                         service.settings.retry.max_attempts)
    audit_subject(request, job_id=job.id)
    done = finished_or_accepted(service.queue, job, wait)
    if isinstance(done, JSONResponse):
        return done
    reply = (service.queue.result(done.id) or {}).get("correction", {})
    restore = service.queue.get(reply["restore_job"]) if reply.get("restore_job") is not None else None
    if restore is not None:  # asked again: a restore job that failed goes back in the queue
        _requeued(service.queue, restore)
    return ToothCorrectionOut(correction_job=done.id, **reply)


def finished_or_accepted(queue, job: Job, wait: float) -> Job | JSONResponse:  # noqa: ANN001 - JobQueue
    """Wait up to ``wait`` seconds for the correction ``job``: the job once it succeeded,
    else a 202 naming it (queued or running); an HTTP error if it failed (422: a
    permanent failure, an input error; 500: out of attempts) or was cancelled (409)."""
    job = queue.wait_for_job(job.id, wait) or job
    if job.state is JobState.SUCCEEDED:
        return job
    if job.state is JobState.FAILED:  # a permanent failure: an input error
        raise HTTPException(422, f"correction job {job.id} failed: {job.error}")
    if job.state is JobState.DEAD:
        raise HTTPException(500, f"correction job {job.id} failed {job.attempts} times: {job.error}")
    if job.state is JobState.CANCELLED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"correction job {job.id} was cancelled: post the correction "
                                                      "again to queue it again")
    accepted = ToothCorrectionAccepted(correction_job=job.id, state=job.state,
                                       detail=f"the correction is {job.state.value}: follow /jobs/{job.id}")
    return JSONResponse(accepted.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/jobs/{job.id}"})


@router.get("/tooth-masks", response_model=list[ToothCorrectionOut],
            summary="The corrected tooth Segmentations of a processed photo or video, newest first",
            responses={404: {"description": "Unknown instance"},
                       409: {"description": "Not processed by the video workflow"}})
def list_tooth_mask_corrections(
    request: Request,
    sop_instance_uid: Annotated[str, Query(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                                           description="The source photo or video (as stored on the node).")],
) -> list[ToothCorrectionOut]:
    """What each succeeded correction of the instance's latest processing made (the replies
    ``POST`` gave): a client picks the one to build on (``based_on``) or to show."""
    service, meta = stored_instance(request, sop_instance_uid)
    process_job = processing_job(service.queue, meta.study_uid, sop_instance_uid)
    return [ToothCorrectionOut(correction_job=job.id, **reply)
            for job, reply in corrections_of(service.queue, process_job, sop_instance_uid)]
