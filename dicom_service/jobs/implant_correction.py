"""Implant review jobs: a dentist's review of the AI's implant findings, run by a worker.

``POST /corrections/implants`` checks what it can (the radiograph, its processing job, the
review against the findings the job reported and the image size), then queues a
``correct`` job whose payload's ``target`` is ``"implants"`` and waits a while for it. The
job (:func:`run_implant_correction_job`) runs
:func:`~dicom_service.pipelines.implant_correction.correct_implants` on the stored
radiograph, keeps the corrected report, presentation state, Segmentation and capture with
the processing job's results and queues them for the destinations of the radiograph
workflow. Being a job, an accepted review survives a restart (it runs again, to the same
UIDs).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom import dcmread

from dicom_service.config import Settings
from dicom_service.domain import InputError, Job, JobKind, JobState
from dicom_service.jobs.correction import instance_and_processing_job
from dicom_service.jobs.queue import JobQueue
from dicom_service.jobs.worker import keep_and_dispatch
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.pipelines.implant_correction import ImplantReview, correct_implants, reported_findings
from dicom_service.storage import InstanceStore
from dicom_service.vision.runtime import RadiographRuntime

#: The payload ``target`` of an implant review (a tooth-mask correction has none).
TARGET = "implants"


def is_implant_review(job: Job) -> bool:
    """True for a ``correct`` job that reviews implant findings."""
    return job.kind is JobKind.CORRECT and job.payload.get("target") == TARGET


def implant_review_key(process_job: Job, review: ImplantReview) -> str:
    """The job's idempotency key: one job per processing job, review and reviewer."""
    return f"correct-implants/{process_job.id}/{review.key()}"


def implant_review_payload(sop_instance_uid: str, process_job: Job, review: ImplantReview) -> dict:
    """What an implant review job needs: the radiograph, its processing job, the review."""
    return {"target": TARGET, "sop_instance_uid": sop_instance_uid, "process_job": process_job.id,
            "review": review.to_json()}


def reported_entry(queue: JobQueue, process_job: Job, sop: str) -> dict:
    """What ``process_job`` reported for radiograph ``sop`` (its summary's entry, with
    ``implants``, ``rows`` and ``columns``).

    Raises
    ------
    InputError
        The job's summary has no entry for ``sop``.
    """
    summary = (queue.result(process_job.id) or {}).get("summary", {})
    for entry in summary.get("instances", []):
        if entry.get("sop_instance_uid") == sop:
            return entry
    raise InputError(f"the processing job {process_job.id} reported nothing for radiograph {sop}")


def reviews_of(queue: JobQueue, process_job: Job, sop: str) -> list[tuple[Job, dict]]:
    """The succeeded implant reviews of radiograph ``sop`` among ``process_job``'s results,
    newest first, each with its reply (the result's ``implant_review``)."""
    jobs = queue.list(kind=JobKind.CORRECT, state=JobState.SUCCEEDED, study_uid=process_job.study_uid, limit=10_000)
    return [(job, dict((queue.result(job.id) or {}).get("implant_review") or {})) for job in jobs
            if is_implant_review(job) and job.payload.get("process_job") == process_job.id
            and job.payload.get("sop_instance_uid") == sop]


def run_implant_correction_job(settings: Settings, store: InstanceStore, queue: JobQueue, runtime: RadiographRuntime,
                               job: Job, progress: Callable[[str], None]) -> dict:
    """Run an implant review job (module docstring); returns its JSON result: ``results``
    (``[[kind, path], ...]``), ``implant_review`` (what the HTTP reply reports) and
    ``dispatch_jobs``.

    Raises
    ------
    InputError
        The radiograph or its processing job is gone, or the review does not apply (a
        permanent failure).
    """
    sop = str(job.payload.get("sop_instance_uid", ""))
    meta, process_job = instance_and_processing_job(store, queue, job)
    entry = reported_entry(queue, process_job, sop)
    review = ImplantReview.from_json(job.payload.get("review") or {})
    source = dcmread(meta.path, defer_size=DEFER_BYTES)
    result = correct_implants(source, runtime, reported_findings(entry), review, uid_seed=process_job.key,
                              progress=progress)
    written, sent = keep_and_dispatch(settings, store, queue, job, process_job, result.objects,
                                      suffix=f"/review/{review.key()}", progress=progress)
    paths = dict(written)
    objects = {obj.kind: {"sop_instance_uid": str(obj.dataset.SOPInstanceUID),
                          "series_instance_uid": str(obj.dataset.SeriesInstanceUID), "path": paths[obj.kind]}
               for obj in result.objects}
    reply = {"job_id": process_job.id, **result.summary, "objects": objects, "dispatch_jobs": sent or []}
    return {"results": written, "implant_review": reply, "dispatch_jobs": sent or []}
