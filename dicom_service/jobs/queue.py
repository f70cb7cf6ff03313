"""The job queue interface, independent of its storage engine.

The embedded engine is :class:`dicom_service.jobs.sqlite_queue.SQLiteJobQueue`; a
distributed engine can be added beside it by implementing :class:`JobQueue`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dicom_service.domain import Job, JobKind, JobState, Workflow


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: ``initial * factor**(attempt-1)``, capped at ``maximum`` seconds."""

    initial: float = 2.0
    factor: float = 2.0
    maximum: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        return min(self.maximum, self.initial * self.factor ** (attempt - 1))


#: The error recorded for an attempt whose job was cancelled while it ran.
CANCELLED_WHILE_RUNNING = "cancelled while running: stopped, its results (if any) kept but not sent"


class JobQueue(Protocol):
    """A persistent queue of jobs with retries, dead letters and idempotency keys."""

    def enqueue(
        self,
        kind: JobKind,
        key: str,
        *,
        study_uid: str,
        workflow: Workflow | None,
        payload: dict,
        max_attempts: int,
    ) -> Job | None:
        """Add a job unless one with the same ``key`` exists; return it, or None if it existed."""
        ...

    def claim(self, kinds: tuple[JobKind, ...], worker: str) -> Job | None:
        """Take a due queued job of these kinds and mark it running (a new attempt): of the
        first kind in ``kinds`` that has one, the oldest."""
        ...

    def heartbeat_log(self, job_id: int, text: str) -> bool:
        """Append a line to the running attempt's log; return whether the job is still
        running (False once it was cancelled: the worker stops it)."""
        ...

    def complete(self, job_id: int, *, result: dict | None = None) -> bool:
        """Mark a running job succeeded; False if it was no longer running (cancelled: the
        attempt is then recorded as not ok)."""
        ...

    def fail(self, job_id: int, error: str, *, permanent: bool = False) -> JobState:
        """Record a failed attempt; return the new state (queued with back-off, failed or dead)."""
        ...

    def by_key(self, key: str) -> Job | None:
        """The job with idempotency key ``key``, or None."""
        ...

    def get(self, job_id: int) -> Job | None:
        """One job with its attempts, or None."""
        ...

    def list(
        self, *, state: JobState | None = None, kind: JobKind | None = None,
        study_uid: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first (attempt logs not included)."""
        ...

    def retry(self, job_id: int) -> Job:
        """Put a failed, dead or cancelled job back in the queue now; :class:`JobStateConflict`
        in any other state, and while a job cancelled as it ran still has its attempt open
        (the worker stops it at its next progress line)."""
        ...

    def cancel(self, job_id: int) -> Job:
        """Cancel a queued or running job (a running one stops at its next progress line)."""
        ...

    def retire_study(self, study_uid: str, removed_at: float) -> int:
        """After a study's files were removed: keep its jobs as records, free their keys (the
        same instances sent again make new jobs) and refuse their retry; returns how many."""
        ...

    def release(self, job_id: int, reason: str) -> bool:
        """Return a running job to the queue without counting the attempt (shutdown)."""
        ...

    def wait_for_job(self, job_id: int, timeout: float) -> Job | None:
        """Block until the job is neither queued nor running, or ``timeout`` seconds pass;
        return it as it is then (None if there is no such job)."""
        ...

    def wait_for_change(self, timeout: float) -> None:
        """Block until a job is added or re-queued, or ``timeout`` seconds pass."""
        ...

    def result(self, job_id: int) -> dict | None:
        """What a succeeded job recorded, or None."""
        ...

    def recover(self) -> int:
        """After a crash: return jobs left running to the queue (the interrupted attempt not
        counted), except a job whose previous attempt was also ended by a crash, which is
        dead (it may be what kills the service); the number returned to the queue."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        ...

    def kind_counts(self) -> dict[tuple[str, str], int]:
        """Number of jobs of each (kind, state) that has any."""
        ...

    def attempt_seconds(self) -> dict[tuple[str, bool], tuple[int, float]]:
        """Finished attempts by (kind, ok): their number and their total seconds."""
        ...

    def seconds_until_due(self, kinds: tuple[JobKind, ...]) -> float | None:
        """Seconds until the next queued job of these kinds is due, or None if none."""
        ...


#: Appended (with the time) to the keys of the jobs of a removed study (``retire_study``).
RETIRED_KEY = "#removed@"


def is_retired(job: Job) -> bool:
    """True for a job of a study whose files were removed (kept as a record only)."""
    return RETIRED_KEY in job.key


class JobNotFound(LookupError):
    """No job with that id."""


class JobStateConflict(RuntimeError):
    """The job is not in a state that allows the operation."""


def enqueued_or_existing(queue: JobQueue, kind: JobKind, key: str, *, study_uid: str, workflow: Workflow | None,
                         payload: dict, max_attempts: int) -> Job:
    """The job of ``key``: queued now, or the one that already had that key (in any state)."""
    job = queue.enqueue(kind, key, study_uid=study_uid, workflow=workflow, payload=payload,
                        max_attempts=max_attempts)
    if job is None:
        job = queue.by_key(key)
        assert job is not None  # enqueue found it
    return job
