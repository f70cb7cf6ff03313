"""A job cancelled while it runs stops at its next progress line, and its attempt says so."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dicom_service.domain import Job, JobKind, JobState, Workflow
from dicom_service.jobs.queue import CANCELLED_WHILE_RUNNING
from dicom_service.jobs.sqlite_queue import SQLiteJobQueue
from dicom_service.jobs.worker import WorkerContext, WorkerPool
from dicom_service.pipelines.base import PipelineOutput


def test_a_running_job_stops_when_cancelled(make_settings, tmp_path: Path) -> None:
    queue = SQLiteJobQueue(tmp_path / "jobs.sqlite3")
    started, stopped = threading.Event(), threading.Event()
    lines = 0

    def process(job: Job, progress) -> PipelineOutput:  # noqa: ANN001 - the worker's progress log
        """A long workflow: one progress line per step until it is stopped (never returns on its own)."""
        nonlocal lines
        started.set()
        try:
            while True:
                progress("step")
                lines += 1
                stopped.wait(0.01)  # a step of work
        finally:
            stopped.set()

    settings = make_settings()
    pool = WorkerPool(WorkerContext(settings, None, queue, process), (JobKind.PROCESS,), 1, "test")  # type: ignore[arg-type]
    job = queue.enqueue(JobKind.PROCESS, "long", study_uid="1.2.3", workflow=Workflow.VIDEO, payload={},
                        max_attempts=3)
    assert job is not None
    pool.start()
    try:
        assert started.wait(30)
        assert queue.cancel(job.id).state is JobState.CANCELLED
        assert stopped.wait(30), "the cancelled job ran on"
        deadline = time.monotonic() + 30
        while (got := queue.get(job.id)) is not None and got.attempt_log[-1].finished_at is None:
            assert time.monotonic() < deadline, "the attempt was not ended"
            queue.wait_for_change(0.05)
        assert got is not None and got.state is JobState.CANCELLED and got.attempts == 1
        assert got.attempt_log[-1].ok is False and got.attempt_log[-1].error == CANCELLED_WHILE_RUNNING
        assert pool.alive()  # the worker goes on serving
        again = queue.retry(job.id)
        assert again.state is JobState.QUEUED
        deadline = time.monotonic() + 30
        while (got := queue.get(job.id)) is not None and got.attempts < 2:  # taken again by the same worker
            assert time.monotonic() < deadline, "the retried job was not taken again"
            queue.wait_for_change(0.05)
    finally:
        pool.stop(grace_seconds=5)
    assert lines >= 1
