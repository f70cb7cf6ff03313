"""Doctor-in-the-loop: correct the AI's tooth masks with clicks or a box, get an amended SEG.

``POST /corrections/tooth-masks`` names a stored photo or video that the video workflow has
processed, a frame, and the dentist's clicks and/or box on it. The node segments that frame
from the prompts, carries the result to the neighbouring frames, writes an amended tooth
Segmentation beside the AI's (the other frames keep the AI's masks, read from the job's own
Segmentation; :mod:`dicom_service.pipelines.correction`), keeps it with the
job's results and queues it for every destination that receives the workflow's ``seg``
results, as the job's own results were.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom import dcmread

from dicom_service.api.auth import Authenticated
from dicom_service.domain import InputError, Job, JobKind, JobState, MediaError, Workflow
from dicom_service.jobs.worker import queue_dispatches
from dicom_service.pipelines.base import ResultObject
from dicom_service.pipelines.correction import (
    CorrectionTooLarge,
    MaskCorrection,
    correct_tooth_masks,
    segmentation_masks,
)
from dicom_service.pipelines.video_memory import video_budget_bytes
from dicom_service.vision.tooth_predictor import ToothSegmenter

log = logging.getLogger(__name__)

router = APIRouter(prefix="/corrections", tags=["corrections"], dependencies=[Authenticated])

Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class ToothCorrectionIn(BaseModel):
    """Clicks and/or a box on one frame of a processed photo or video."""

    model_config = ConfigDict(extra="forbid")

    sop_instance_uid: str = Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                                  description="The source photo or video (as stored on the node).")
    frame: int = Field(0, ge=0, description="0-based frame index (0 for a photograph).")
    points: list[tuple[Coordinate, Coordinate]] | None = Field(
        None, max_length=64, description="Clicks, (x, y) in pixels of the frame.")
    labels: list[Literal[0, 1]] | None = Field(
        None, max_length=64, description="One per click: 1 = tooth, 0 = not tooth.")
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        None, description="x0, y0, x1, y1 in pixels around the teeth.")
    radius: int | None = Field(None, ge=0, description="Frames on each side to carry the correction to "
                                                      "(omitted: the whole clip; 0: this frame only).")

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
            radius=self.radius)


class ToothCorrectionOut(BaseModel):
    """The amended Segmentation: where it is kept and where it goes."""

    job_id: int = Field(description="The processing job whose results it joins.")
    sop_instance_uid: str
    series_instance_uid: str
    path: str
    frames: int
    corrected_frames: tuple[int, int] = Field(description="First and last frame (0-based) the correction reached.")
    score: float = Field(description="The tooth model's predicted IoU of the corrected frame's mask.")
    tooth_fraction: float = Field(description="Share of the corrected frame that is tooth.")
    dispatch_jobs: list[int]


def _ai_masks(queue, job: Job, sop: str) -> np.ndarray | None:  # noqa: ANN001 - JobQueue
    """The tooth masks the job's own Segmentation of instance ``sop`` holds (None if it
    cannot be read: the correction then segments the other frames again)."""
    result = queue.result(job.id) or {}
    for kind, path in result.get("results", []):
        if kind != "seg":
            continue
        try:
            masks = segmentation_masks(dcmread(path), sop)
        except (OSError, ValueError, MediaError) as error:
            log.warning("job %d: its Segmentation %s does not read (%s)", job.id, path, type(error).__name__)
            continue
        if masks is not None:
            return masks
    return None


def _processing_job(queue, study_uid: str, sop: str) -> Job:  # noqa: ANN001 - JobQueue
    """The newest succeeded video job that processed instance ``sop``; 409 if there is none
    (naming the state of the newest such job, if one is queued, running or failed)."""
    jobs = [job for job in queue.list(kind=JobKind.PROCESS, study_uid=study_uid, limit=1000)
            if job.workflow is Workflow.VIDEO and sop in job.payload.get("sop_instance_uids", [])]
    for job in jobs:  # newest first
        if job.state is JobState.SUCCEEDED:
            return job
    if jobs:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"instance {sop}: its video job {jobs[0].id} is {jobs[0].state.value}, not succeeded")
    raise HTTPException(status.HTTP_409_CONFLICT, f"instance {sop} has not been processed by the video workflow")


@router.post("/tooth-masks", response_model=ToothCorrectionOut, status_code=status.HTTP_201_CREATED,
             summary="Correct the tooth masks of a photo or video with clicks or a box",
             responses={404: {"description": "Unknown instance"},
                        409: {"description": "Not processed by the video workflow, or no interactive tooth model"},
                        413: {"description": "The clip is too large to correct in the memory allowed"},
                        422: {"description": "Bad request: prompts, frame, or undecodable pixels"}})
def correct_tooth_masks_endpoint(request: Request, body: ToothCorrectionIn) -> ToothCorrectionOut:
    service = request.app.state.service
    if service.store is None or service.queue is None or service.runtimes is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is not started")
    meta = service.store.instance(body.sop_instance_uid)
    if meta is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"instance {body.sop_instance_uid} is not stored here")
    job = _processing_job(service.queue, meta.study_uid, body.sop_instance_uid)
    runtime = service.runtimes.video
    shared = getattr(runtime, "segmenter", None)
    if not isinstance(shared, ToothSegmenter):
        raise HTTPException(status.HTTP_409_CONFLICT, f"the video runtime {runtime.info.name!r} has no interactive "
                                                      "tooth model (models.video: learned has one)")
    segmenter = shared.sibling()  # the workers' one caches other images
    workers = service.settings.workers
    try:
        result = correct_tooth_masks(dcmread(meta.path), segmenter, body.correction(), algorithm=runtime.info,
                                     uid_seed=job.key,
                                     max_bytes=video_budget_bytes(workers.video_memory_mb, workers.processing),
                                     previous=_ai_masks(service.queue, job, body.sop_instance_uid))
    except CorrectionTooLarge as error:
        log.warning("correction refused (too large): job %d", job.id)
        raise HTTPException(413, str(error)) from error
    except InputError as error:
        log.warning("correction refused: job %d: %s", job.id, type(error).__name__)
        raise HTTPException(422, str(error)) from error
    seg = result.segmentation
    sop = str(seg.SOPInstanceUID)
    path = service.store.write_result(job.id, sop, ResultObject("seg", seg).write)
    dispatches = queue_dispatches(service.settings, service.queue, job, [("seg", str(path))],
                                  suffix=f"/correction/{sop}")
    log.info("tooth masks corrected: job %d, frames %d-%d of %d, %d dispatch jobs", job.id,
             *result.corrected_frames, result.frames, len(dispatches))
    return ToothCorrectionOut(job_id=job.id, sop_instance_uid=sop, series_instance_uid=str(seg.SeriesInstanceUID),
                              path=str(path), frames=result.frames, corrected_frames=result.corrected_frames,
                              score=result.score, tooth_fraction=result.tooth_fraction, dispatch_jobs=dispatches)
