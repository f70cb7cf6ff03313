"""How long the node keeps a study, and removing one: retention and the user's delete.

The node is not an archive: the PACS keeps the images and receives the results. With
``storage.retention_days`` > 0, a :class:`RetentionThread` removes (``InstanceStore.
purge_study``) every study that

- has received nothing for that many days and has been routed,
- has no job queued or running, and no job changed in that time,
- has no undelivered results: a dead or failed dispatch job keeps its study (and files)
  until someone retries it or deletes the study (``DELETE /studies/{uid}``).

A removed study's jobs stay listed (their logs and outcome are the audit trail) but
their keys are retired, so the same instances sent again are processed again, and they
can no longer be retried. 0 (the default) keeps everything.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from dicom_service.domain import Job, JobKind, JobState
from dicom_service.jobs.queue import JobQueue, is_retired
from dicom_service.storage import InstanceStore, PurgeReport

log = logging.getLogger(__name__)

ACTIVE = (JobState.QUEUED, JobState.RUNNING)
#: A dispatch job in these states never delivered its results (a cancelled one can be retried).
UNDELIVERED = (JobState.DEAD, JobState.FAILED, JobState.CANCELLED)
#: Jobs of one study looked at, at most (a study has a few per instance).
MAX_STUDY_JOBS = 100_000
#: Seconds between two retention passes.
PASS_SECONDS = 600.0


class StudyBusy(RuntimeError):
    """The study cannot be removed now; the message says why."""


@dataclass(frozen=True)
class StudyJobs:
    """A study's jobs, sorted into what blocks its removal. ``jobs`` leaves out those of
    an earlier copy of the study that was removed (retired, records only); ``all_ids``
    holds them too."""

    jobs: list[Job]
    all_ids: list[int]

    @property
    def active(self) -> list[Job]:
        return [j for j in self.jobs if j.state in ACTIVE]

    @property
    def undelivered(self) -> list[Job]:
        return [j for j in self.jobs if j.kind is JobKind.DISPATCH and j.state in UNDELIVERED]

    @property
    def last_change(self) -> float:
        return max((j.updated_at for j in self.jobs), default=0.0)


def study_jobs(queue: JobQueue, study_uid: str) -> StudyJobs:
    """The jobs of a study."""
    jobs = queue.list(study_uid=study_uid, limit=MAX_STUDY_JOBS)
    return StudyJobs([j for j in jobs if not is_retired(j)], [j.id for j in jobs])


def remove_study(store: InstanceStore, queue: JobQueue, study_uid: str, *, reason: str,
                 discard_undelivered: bool = False, changed_before: float | None = None) -> PurgeReport:
    """Remove a study's instances and results now.

    The checks, the retirement of its jobs and the purge hold the study's lock
    (``InstanceStore.study_lock``), as its stores and its routing do: no instance of it is
    stored and no job made for it between the checks and the purge.

    Raises
    ------
    StudyBusy
        Instances of it still wait for routing, a job of it is queued or running (cancel
        it first), results are undelivered (dispatch dead, failed or cancelled) and
        ``discard_undelivered`` is False, or a job of it changed after ``changed_before``
        (epoch seconds; None: not checked).
    """
    with store.study_lock(study_uid):
        held = store.studies(study_uid=study_uid, limit=1)
        if held and held[0].pending:
            raise StudyBusy("instances of the study are still arriving or wait for routing "
                            "(routing.stability_seconds): try again once it is routed")
        jobs = study_jobs(queue, study_uid)
        if jobs.active:
            raise StudyBusy("job(s) " + ", ".join(f"{j.id} ({j.state.value})" for j in jobs.active)
                            + " of the study are not finished: cancel them first")
        if jobs.undelivered and not discard_undelivered:
            raise StudyBusy("the results of dispatch job(s) " + ", ".join(str(j.id) for j in jobs.undelivered)
                            + " were never delivered: retry them, or delete with discard_undelivered=true")
        if changed_before is not None and jobs.last_change > changed_before:
            raise StudyBusy("a job of it changed within the retention time")
        # Retired first: a kill between the two leaves the study held with its jobs as records,
        # and the next DELETE or retention pass removes it; the other way round, the same
        # instances sent again would find their old jobs and never be processed again.
        retired = queue.retire_study(study_uid, time.time())
        report = store.purge_study(study_uid, jobs.all_ids, reason)
    log.info("study %s removed (%s): %d instances, %d results, %.1f MB; %d jobs kept as records", study_uid,
             reason, report.instances, report.results, report.bytes / 1e6, retired)
    return report


def expire(store: InstanceStore, queue: JobQueue, retention_days: float, now: float | None = None
           ) -> list[PurgeReport]:
    """Remove every study that retention lets go at ``now`` (module docstring); returns
    what was removed. Studies that are busy or undelivered are skipped, not errors."""
    now = time.time() if now is None else now
    cutoff = now - retention_days * 86_400.0
    removed = []
    offset = 0
    while True:
        batch = store.studies(received_before=cutoff, pending=False, limit=500, offset=offset)
        if not batch:
            return removed
        kept = 0
        for study in batch:
            try:
                removed.append(remove_study(store, queue, study.study_uid, changed_before=cutoff,
                                            reason=f"retention ({retention_days:g} days)"))
            except StudyBusy:  # a job not finished, results undelivered, or recent: kept
                kept += 1
        offset += kept


class RetentionThread:
    """Runs :func:`expire` at start and every :data:`PASS_SECONDS` in a background thread."""

    def __init__(self, store: InstanceStore, queue: JobQueue, retention_days: float,
                 interval: float = PASS_SECONDS) -> None:
        self.store = store
        self.queue = queue
        self.retention_days = retention_days
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                removed = expire(self.store, self.queue, self.retention_days)
                if removed:
                    log.info("retention pass: %d studies removed", len(removed))
            except Exception:  # noqa: BLE001 - keep the loop alive, the error is logged
                log.exception("retention pass failed; trying again later")
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a pass in progress finishes its current study)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
