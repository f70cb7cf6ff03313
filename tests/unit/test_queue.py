"""SQLite job queue: idempotency, retries with back-off, dead letters, recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dicom_service.domain import JobKind, JobState, Workflow
from dicom_service.jobs.queue import CANCELLED_WHILE_RUNNING, Backoff, JobNotFound, JobStateConflict
from dicom_service.jobs.sqlite_queue import SQLiteJobQueue

P = (JobKind.PROCESS,)


def _queue(tmp_path: Path, initial: float = 0.0) -> SQLiteJobQueue:
    return SQLiteJobQueue(tmp_path / "jobs.sqlite3", Backoff(initial=initial, factor=2, maximum=100))


def _add(q: SQLiteJobQueue, key: str = "k", attempts: int = 3):
    return q.enqueue(JobKind.PROCESS, key, study_uid="1.2", workflow=Workflow.VIDEO,
                     payload={"a": 1}, max_attempts=attempts)


def test_backoff_is_exponential_and_capped() -> None:
    b = Backoff(initial=2, factor=3, maximum=20)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [2, 6, 18, 20]
    with pytest.raises(ValueError):
        b.delay(0)


def test_enqueue_is_idempotent_by_key(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    assert _add(q) is not None
    assert _add(q) is None
    assert q.counts()["queued"] == 1


def test_claim_complete_and_attempt_log(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    job = _add(q)
    claimed = q.claim(P, "w1")
    assert claimed.id == job.id and claimed.state is JobState.RUNNING and claimed.attempts == 1
    assert q.claim(P, "w2") is None
    q.heartbeat_log(job.id, "step one")
    assert q.complete(job.id, result={"n": 2})
    got = q.get(job.id)
    assert got.state is JobState.SUCCEEDED
    assert got.attempt_log[0].ok is True and "step one" in got.attempt_log[0].log
    assert q.result(job.id) == {"n": 2}


def test_claim_takes_the_first_kind_in_order_first(tmp_path: Path) -> None:
    """The processing workers claim (restore, process): a dentist's restore job goes before
    auto-routed studies queued earlier; each kind in the order it was queued."""
    q = _queue(tmp_path)
    first, second = _add(q, "study/1"), _add(q, "study/2")
    restore = q.enqueue(JobKind.RESTORE, "restore/1", study_uid="1.2", workflow=Workflow.VIDEO, payload={},
                        max_attempts=3)
    assert restore is not None and restore.id > second.id
    assert q.claim((JobKind.PROCESS, JobKind.RESTORE), "w").id == first.id
    order = [q.claim((JobKind.RESTORE, JobKind.PROCESS), "w") for _ in range(3)]
    assert [job.id if job else None for job in order] == [restore.id, second.id, None]


def test_transient_failures_back_off_then_dead(tmp_path: Path) -> None:
    q = _queue(tmp_path, initial=60.0)
    job = _add(q, attempts=2)
    q.claim(P, "w")
    assert q.fail(job.id, "boom 1") is JobState.QUEUED
    assert q.claim(P, "w") is None  # not due for 60 s
    assert 50 < q.seconds_until_due(P) <= 60
    with q.db.transaction() as conn:  # move the clock: make it due now
        conn.execute("UPDATE jobs SET not_before = ?", (time.time(),))
    q.claim(P, "w")
    assert q.fail(job.id, "boom 2") is JobState.DEAD
    got = q.get(job.id)
    assert got.error == "boom 2" and [a.error for a in got.attempt_log] == ["boom 1", "boom 2"]


def test_permanent_failure_skips_retries(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    job = _add(q, attempts=5)
    q.claim(P, "w")
    assert q.fail(job.id, "bad input", permanent=True) is JobState.FAILED


def test_retry_and_cancel_rules(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    job = _add(q, attempts=1)
    with pytest.raises(JobStateConflict):
        q.retry(job.id)
    q.claim(P, "w")
    q.fail(job.id, "x")
    assert q.get(job.id).state is JobState.DEAD
    again = q.retry(job.id)
    assert again.state is JobState.QUEUED and again.max_attempts == 2
    assert q.cancel(job.id).state is JobState.CANCELLED
    with pytest.raises(JobStateConflict):
        q.cancel(job.id)
    with pytest.raises(JobNotFound):
        q.retry(999)


def test_cancelled_running_job_cannot_complete(tmp_path: Path) -> None:
    """The worker learns of the cancel at its next log line; the attempt that ran on is
    recorded as not ok, and the job cannot be retried until that attempt has ended."""
    q = _queue(tmp_path)
    job = _add(q)
    q.claim(P, "w")
    assert q.heartbeat_log(job.id, "working") is True
    q.cancel(job.id)
    assert q.heartbeat_log(job.id, "still working") is False
    with pytest.raises(JobStateConflict, match="still stopping"):
        q.retry(job.id)
    assert q.complete(job.id) is False
    got = q.get(job.id)
    assert got.state is JobState.CANCELLED
    assert got.attempt_log[0].ok is False and got.attempt_log[0].error == CANCELLED_WHILE_RUNNING
    assert q.retry(job.id).state is JobState.QUEUED  # the attempt has ended


def test_recover_returns_running_jobs_without_spending_an_attempt(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    job = _add(q, attempts=1)
    q.claim(P, "w")
    q.close()  # the process "dies" with the job running
    q2 = _queue(tmp_path)
    assert q2.recover() == 1
    got = q2.get(job.id)
    assert got.state is JobState.QUEUED
    assert got.attempt_log[0].error.startswith("interrupted")
    again = q2.claim(P, "w")
    assert again is not None and again.attempts == 2 and again.max_attempts >= 2


def test_a_job_during_which_the_service_died_twice_is_dead(tmp_path: Path) -> None:
    """A job that kills the service (out of memory, say) is not run on every restart: the
    second death in a row during it makes it dead; a retry runs it again."""
    q = _queue(tmp_path)
    job = _add(q, attempts=3)
    q.claim(P, "w")
    q.close()  # dies during the job's first attempt: forgiven
    q = _queue(tmp_path)
    assert q.recover() == 1 and q.get(job.id).state is JobState.QUEUED
    assert q.claim(P, "w").id == job.id
    other = _add(q, attempts=3, key="other")
    q.close()  # dies again during it
    q = _queue(tmp_path)
    assert q.recover() == 0
    got = q.get(job.id)
    assert got.state is JobState.DEAD and "last two attempts" in got.error
    assert q.get(other.id).state is JobState.QUEUED  # the others are untouched
    assert q.retry(job.id).state is JobState.QUEUED


def test_release_puts_a_job_back(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    job = _add(q, attempts=1)
    q.claim(P, "w")
    assert q.release(job.id, "shutdown")
    assert q.claim(P, "w").attempts == 2
