"""Restore jobs: a processed photo or video enhanced again with a dentist's corrected tooth masks.

A correction job asked for it (``POST /corrections/tooth-masks`` with ``restore: true``)
queues a ``restore`` job once the corrected Segmentation is written. The processing
workers run it (:func:`run_restore_job`), inside their video memory budget like any
clip: :func:`~dicom_service.pipelines.video.restore_video_instance` streams the stored
source through the video runtime with the corrected Segmentation's masks, read from its
file frame by frame, guiding the restoration, keeps the amended enhanced video (or
photograph) and report with the processing job's results and queues them for every
destination that receives the workflow's ``video``, ``sc`` or ``sr`` results. Being a job,
it survives a restart and runs again to the same UIDs.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom import dcmread

from dicom_service.config import Settings
from dicom_service.domain import InputError, Job
from dicom_service.jobs.correction import instance_and_processing_job
from dicom_service.jobs.queue import JobQueue
from dicom_service.jobs.worker import keep_and_dispatch
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.media.seg_frames import SEGMENTATION_READ_ERRORS, segmentation_frames
from dicom_service.pipelines.video import restore_video_instance
from dicom_service.pipelines.video_memory import video_budget_bytes
from dicom_service.storage import InstanceStore
from dicom_service.vision.runtime import VideoRuntime


def run_restore_job(settings: Settings, store: InstanceStore, queue: JobQueue, runtime: VideoRuntime,
                    job: Job, progress: Callable[[str], None]) -> dict:
    """Run a ``restore`` job (module docstring); returns its JSON result: ``summary``,
    ``results`` (``[[kind, path], ...]``) and ``dispatch_jobs``.

    Raises
    ------
    InputError
        The instance, its processing job or the corrected Segmentation is gone or does not
        read, or the runtime does not restore with tooth masks (a permanent failure).
    """
    sop = str(job.payload.get("sop_instance_uid", ""))
    meta, process_job = instance_and_processing_job(store, queue, job)
    path = str(job.payload.get("segmentation", ""))
    try:
        segmentation = dcmread(path, defer_size=DEFER_BYTES)  # read once: attributes here, the bits mapped
        masks = segmentation_frames(segmentation, sop)
    except SEGMENTATION_READ_ERRORS as error:
        raise InputError(f"the corrected Segmentation does not read ({type(error).__name__})") from error
    if masks is None:
        raise InputError(f"the corrected Segmentation is not a tooth Segmentation of instance {sop}")
    source = dcmread(meta.path, defer_size=DEFER_BYTES)  # pixel data read from the file
    workers = settings.workers
    objects, summary = restore_video_instance(
        source, runtime, masks, segmentation, uid_seed=process_job.key, progress=progress,
        memory_budget=video_budget_bytes(workers.video_memory_mb, workers.processing))
    written, dispatches = keep_and_dispatch(settings, store, queue, job, process_job, objects,
                                            suffix=f"/restore/{segmentation.SOPInstanceUID}", progress=progress)
    return {"summary": summary, "results": written, "dispatch_jobs": dispatches or []}
