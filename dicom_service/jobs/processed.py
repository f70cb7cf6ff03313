"""The instances a workflow has processed, newest first: the photos and videos a dentist
can open on the correction page, and the radiographs on the implant review page
(``GET /instances``)."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_service.domain import InstanceMeta, Job, JobKind, JobState, Workflow
from dicom_service.jobs.correction import corrections_of
from dicom_service.jobs.implant_correction import reviews_of
from dicom_service.jobs.queue import JobQueue, is_retired
from dicom_service.storage import InstanceStore

#: Processing jobs read per query of the queue, and at most in all for one listing (a
#: bound on the work of one request on a node that has processed many thousands).
JOB_PAGE = 200
MAX_JOBS_SCANNED = 20_000


@dataclass(frozen=True)
class ProcessedInstance:
    """A stored photo or video, the newest succeeded video job that processed it, and how
    many corrected tooth Segmentations have been made of it since
    (:func:`~dicom_service.jobs.correction.corrections_of`)."""

    meta: InstanceMeta
    process_job: Job
    corrections: int


def processing_jobs(queue: JobQueue, study_uid: str, sop: str, workflow: Workflow) -> list[Job]:
    """The ``workflow`` jobs of study ``study_uid`` that processed instance ``sop``, in any
    state, newest first; jobs of an earlier, removed copy of the study (retired) left out."""
    return [job for job in queue.list(kind=JobKind.PROCESS, study_uid=study_uid, limit=1000)
            if job.workflow is workflow and not is_retired(job)
            and sop in job.payload.get("sop_instance_uids", [])]



def corrections_count(queue: JobQueue, job: Job, sop: str) -> int:
    """The dentist's corrections of instance ``sop`` among ``job``'s results: corrected
    tooth Segmentations (video workflow) or implant reviews (radiograph workflow)."""
    if job.workflow is Workflow.RADIOGRAPH:
        return len(reviews_of(queue, job, sop))
    return len(corrections_of(queue, job, sop))


def processed_instances(queue: JobQueue, store: InstanceStore, *, limit: int,
                        offset: int = 0, workflow: Workflow = Workflow.VIDEO) -> list[ProcessedInstance]:
    """Instances still stored that a ``workflow`` job processed successfully, the newest
    such job first (the job a correction applies to:
    ``api.routers.corrections.processing_job``).

    Parameters
    ----------
    limit, offset : int
        The page of the listing (instances, not jobs).
    workflow : Workflow
        The video workflow (photos and videos) or the radiograph one.

    Notes
    -----
    Jobs of removed studies (retired) are skipped; an instance that several video jobs
    processed is listed once, with the newest. At most
    :data:`MAX_JOBS_SCANNED` processing jobs are read.
    """
    found: list[ProcessedInstance] = []
    seen: set[str] = set()
    wanted = offset + limit
    for start in range(0, MAX_JOBS_SCANNED, JOB_PAGE):
        jobs = queue.list(kind=JobKind.PROCESS, state=JobState.SUCCEEDED, limit=JOB_PAGE, offset=start)
        for job in jobs:
            if job.workflow is not workflow or is_retired(job):
                continue
            sops = [str(s) for s in job.payload.get("sop_instance_uids", []) if str(s) not in seen]
            seen.update(sops)
            if not sops:
                continue
            for sop in sops:
                meta = store.instance(sop)
                if meta is not None:
                    found.append(ProcessedInstance(meta, job, corrections_count(queue, job, sop)))
            if len(found) >= wanted:
                return found[offset:wanted]
        if len(jobs) < JOB_PAGE:
            break
    return found[offset:wanted]


def processed_instance(queue: JobQueue, store: InstanceStore, sop: str) -> ProcessedInstance | None:
    """One stored instance with its newest succeeded video job, else its newest succeeded
    radiograph job; None when it is not stored or neither has processed it successfully."""
    meta = store.instance(sop)
    if meta is None:
        return None
    for workflow in (Workflow.VIDEO, Workflow.RADIOGRAPH):
        jobs = processing_jobs(queue, meta.study_uid, sop, workflow)
        job = next((j for j in jobs if j.state is JobState.SUCCEEDED), None)
        if job is not None:
            return ProcessedInstance(meta, job, corrections_count(queue, job, sop))
    return None
