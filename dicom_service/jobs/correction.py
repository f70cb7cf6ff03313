"""Correction jobs: a dentist's correction of the tooth masks, run by a worker.

``POST /corrections/tooth-masks`` checks what it can from the stored header (the
instance, its processing job, the frame, the prompts, memory and disk), then queues a
``correct`` job and waits a while for it. The job
(:func:`run_correction_job`) runs :func:`~dicom_service.pipelines.correction.correct_tooth_masks`
on the stored source with the AI's masks read from the processing job's own Segmentation,
keeps the amended Segmentation with that job's results and queues it for every
destination that receives the workflow's ``seg`` results. Being a job, a correction of a
long clip survives a restart (it runs again, to the same UIDs) and keeps no HTTP request
open.

When the request asks for it (``restore``), the correction job then queues a ``restore``
job (:mod:`dicom_service.jobs.restore`): the processing workers enhance the instance again
with the restoration guided by the corrected masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom import dcmread

from dicom_service.config import Settings
from dicom_service.domain import InputError, InstanceMeta, Job, JobKind, JobState, Workflow
from dicom_service.jobs.queue import JobQueue, enqueued_or_existing
from dicom_service.jobs.worker import keep_and_dispatch
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.media.seg_frames import SEGMENTATION_READ_ERRORS, segmentation_frames
from dicom_service.pipelines.base import ResultObject
from dicom_service.pipelines.correction import MaskCorrection, MaskFrames, correct_tooth_masks
from dicom_service.pipelines.video_memory import video_budget_bytes
from dicom_service.storage import InstanceStore
from dicom_service.vision.runtime import ProgressThrottle, VideoRuntime
from dicom_service.vision.tooth_predictor import ToothSegmenter

log = logging.getLogger(__name__)

#: Seconds between the progress lines of a correction (each also checks for a cancel).
PROGRESS_SECONDS = 1.0


def correction_job_key(process_job: Job, correction: MaskCorrection, restore: bool = False) -> str:
    """The correction job's idempotency key: one job per processing job, correction and
    whether the enhancement is made again (the Segmentation is the same either way)."""
    return f"correct/{process_job.id}/{correction.key()}" + ("/restore" if restore else "")


def correction_payload(sop_instance_uid: str, process_job: Job, correction: MaskCorrection,
                       restore: bool = False) -> dict:
    """What a correction job needs: the instance, its processing job, the correction, and
    whether to queue a ``restore`` job after it."""
    return {"sop_instance_uid": sop_instance_uid, "process_job": process_job.id, "correction": correction.to_json(),
            "restore": restore}


def instance_and_processing_job(store: InstanceStore, queue: JobQueue, job: Job) -> tuple[InstanceMeta, Job]:
    """The stored instance (``sop_instance_uid``) and the succeeded processing job
    (``process_job``) that a correction or restore ``job``'s payload names.

    Raises
    ------
    InputError
        Either is gone, or the processing job no longer succeeded.
    """
    sop = str(job.payload.get("sop_instance_uid", ""))
    meta = store.instance(sop)
    if meta is None:
        raise InputError(f"instance {sop} is no longer stored")
    process_job = queue.get(int(job.payload.get("process_job", -1)))
    if process_job is None or process_job.state is not JobState.SUCCEEDED:
        raise InputError(f"the processing job of instance {sop} is gone or no longer succeeded")
    return meta, process_job


def queue_restore(settings: Settings, queue: JobQueue, process_job: Job, sop: str, segmentation_path: str,
                  correction: MaskCorrection) -> int:
    """Queue (or find) the ``restore`` job that enhances instance ``sop`` of ``process_job``
    again with the corrected Segmentation at ``segmentation_path``; returns its id."""
    key = f"restore/{process_job.id}/{correction.key()}"
    payload = {"sop_instance_uid": sop, "process_job": process_job.id, "segmentation": segmentation_path}
    # queued before if this correction job runs again after a restart
    return enqueued_or_existing(queue, JobKind.RESTORE, key, study_uid=process_job.study_uid,
                                workflow=Workflow.VIDEO, payload=payload, max_attempts=settings.retry.max_attempts).id


def corrections_of(queue: JobQueue, process_job: Job, sop: str) -> list[tuple[Job, dict]]:
    """The succeeded corrections of instance ``sop`` among ``process_job``'s results, newest
    first: for each corrected Segmentation, the first correction job that made it with its
    reply (the result's ``correction``). The same correction posted with and without
    ``restore`` is two jobs making the same object: their replies are merged (the restore
    job, and the dispatch jobs of both)."""
    first: dict[str, tuple[Job, dict]] = {}
    jobs = queue.list(kind=JobKind.CORRECT, state=JobState.SUCCEEDED, study_uid=process_job.study_uid, limit=10_000)
    for job in reversed(jobs):  # oldest first
        if job.payload.get("process_job") != process_job.id or job.payload.get("sop_instance_uid") != sop:
            continue
        reply = (queue.result(job.id) or {}).get("correction")
        if not reply:
            continue
        uid = str(reply.get("sop_instance_uid"))
        if uid not in first:
            first[uid] = (job, dict(reply))
            continue
        merged = first[uid][1]
        merged["restore_job"] = reply.get("restore_job") or merged.get("restore_job")
        merged["dispatch_jobs"] = sorted({*merged.get("dispatch_jobs", []), *reply.get("dispatch_jobs", [])})
    return sorted(first.values(), key=lambda item: item[0].id, reverse=True)


def corrected_segmentation(queue: JobQueue, process_job: Job, sop: str, uid: str) -> tuple[str, int] | None:
    """The corrected Segmentation ``uid`` of instance ``sop`` that a succeeded correction of
    ``process_job``'s results made: its path and how many corrections it holds; None if
    there is none (unknown, of another instance or processing job, or its job not done)."""
    for _, reply in corrections_of(queue, process_job, sop):
        if reply.get("sop_instance_uid") == uid:
            return str(reply["path"]), int(reply.get("corrections", 1))
    return None


def _readable_masks(path: str, sop: str, job: Job) -> MaskFrames | None:
    """The tooth masks of instance ``sop`` in the Segmentation at ``path``, read frame by
    frame; None (logged) when the file does not read or is not about ``sop``."""
    try:
        return segmentation_frames(path, sop)
    except SEGMENTATION_READ_ERRORS as error:
        log.warning("job %d: its Segmentation %s does not read (%s)", job.id, path, type(error).__name__)
        return None


def ai_masks(queue: JobQueue, job: Job, sop: str) -> MaskFrames | None:
    """The tooth masks the processing ``job``'s own Segmentation of instance ``sop`` holds,
    read frame by frame from its file (None if it cannot be read: the correction then
    segments the other frames again)."""
    result = queue.result(job.id) or {}
    for kind, path in result.get("results", []):
        masks = _readable_masks(path, sop, job) if kind == "seg" else None
        if masks is not None:
            return masks
    return None


def latest_masks(queue: JobQueue, job: Job, sop: str) -> tuple[MaskFrames, str] | None:
    """The tooth masks of instance ``sop`` the node holds now, and whose they are: the
    newest readable corrected Segmentation of ``job``'s results (``"correction <UID>"``),
    else the AI's own (``"ai"``); None if neither reads."""
    for correction_job, reply in corrections_of(queue, job, sop):
        masks = _readable_masks(str(reply["path"]), sop, correction_job)
        if masks is not None:
            return masks, f"correction {reply['sop_instance_uid']}"
    masks = ai_masks(queue, job, sop)
    return (masks, "ai") if masks is not None else None


def run_correction_job(settings: Settings, store: InstanceStore, queue: JobQueue, runtime: VideoRuntime,
                       job: Job, progress: Callable[[str], None]) -> dict:
    """Run a ``correct`` job (module docstring); returns its JSON result.

    The result holds ``results`` (``[["seg", path]]``), ``correction`` (what the HTTP
    reply reports: the amended Segmentation's UIDs and path, frames, the frames reached,
    the model's score, the tooth fraction, the dispatch jobs, the ``restore`` job if one
    was asked for) and ``dispatch_jobs``.

    Raises
    ------
    InputError
        The instance, its processing job or the interactive tooth model is gone, or the
        correction does not apply (a permanent failure).
    StorageFullError
        No disk for the temporary files (retried later).
    """
    sop = str(job.payload.get("sop_instance_uid", ""))
    meta, process_job = instance_and_processing_job(store, queue, job)
    shared = getattr(runtime, "segmenter", None)
    if not isinstance(shared, ToothSegmenter):
        raise InputError(f"the video runtime {runtime.info.name!r} has no interactive tooth model")
    correction = MaskCorrection.from_json(job.payload["correction"])
    workers = settings.workers

    tick = ProgressThrottle(progress, PROGRESS_SECONDS)  # a line (and a check for a cancel) about once a second

    def on_frame(done: int) -> None:
        tick(f"{done} frames' masks settled")

    if correction.based_on is None:
        previous, earlier = ai_masks(queue, process_job, sop), 0
    else:
        previous, earlier = _earlier_correction(queue, process_job, sop, correction.based_on)
    source = dcmread(meta.path, defer_size=DEFER_BYTES)  # pixel data read from the file
    result = correct_tooth_masks(source, shared.sibling(), correction, algorithm=runtime.info, uid_seed=process_job.key,
                                 max_bytes=video_budget_bytes(workers.video_memory_mb, workers.processing),
                                 previous=previous, on_frame=on_frame, earlier=earlier)
    seg = result.segmentation
    seg_uid = str(seg.SOPInstanceUID)
    written, sent = keep_and_dispatch(settings, store, queue, job, process_job, [ResultObject("seg", seg)],
                                      suffix=f"/correction/{seg_uid}", progress=progress)
    path = written[0][1]
    progress(f"amended Segmentation written, frames {result.corrected_frames[0]}-{result.corrected_frames[1]} "
             f"of {result.frames} corrected")
    dispatches = sent or []
    restore_job: int | None = None
    if sent is not None and job.payload.get("restore"):  # still running
        restore_job = queue_restore(settings, queue, process_job, sop, path, correction)
        progress(f"restore job {restore_job} queued: the enhancement again with the corrected masks")
    reply = {"job_id": process_job.id, "sop_instance_uid": seg_uid,
             "series_instance_uid": str(seg.SeriesInstanceUID), "path": path, "frames": result.frames,
             "corrected_frames": list(result.corrected_frames), "score": result.score,
             "tooth_fraction": result.tooth_fraction, "dispatch_jobs": dispatches, "restore_job": restore_job,
             "based_on": correction.based_on, "corrections": earlier + 1, "operator": correction.operator}
    return {"results": [["seg", path]], "correction": reply, "dispatch_jobs": dispatches}


def _earlier_correction(queue: JobQueue, process_job: Job, sop: str, uid: str) -> tuple[MaskFrames, int]:
    """The masks of the corrected Segmentation ``uid`` a correction builds on, read frame by
    frame from its file, and how many corrections they hold; InputError if it is gone."""
    found = corrected_segmentation(queue, process_job, sop, uid)
    if found is None:
        raise InputError(f"no corrected Segmentation {uid} of instance {sop} to build on")
    path, corrections = found
    try:
        masks = segmentation_frames(path, sop)
    except SEGMENTATION_READ_ERRORS as error:
        raise InputError(f"the corrected Segmentation {uid} does not read ({type(error).__name__})") from error
    if masks is None:
        raise InputError(f"{uid} is not a tooth Segmentation of instance {sop}")
    return masks, corrections
