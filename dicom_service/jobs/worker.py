"""In-process workers: run processing jobs through the pipelines, then dispatch results."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_service.audit import AuditEvent, AuditTrail
from dicom_service.config import Destination, DicomWebDestination, Settings
from dicom_service.domain import (
    DispatchError,
    InputError,
    Job,
    JobKind,
    JobState,
    ServiceError,
    Workflow,
)
from dicom_service.jobs.queue import CANCELLED_WHILE_RUNNING, JobQueue
from dicom_service.node.destinations import send_results
from dicom_service.node.scu import SendTimeouts
from dicom_service.pipelines.base import PipelineOutput, ResultObject
from dicom_service.storage import InstanceStore

log = logging.getLogger(__name__)

#: Runs one workflow: (job, progress log) -> output. Built by the service.
ProcessFn = Callable[[Job, Callable[[str], None]], PipelineOutput]
#: Runs one correction job: (job, progress log) -> its JSON result. Built by the service.
CorrectFn = Callable[[Job, Callable[[str], None]], dict]


class JobInterrupted(ServiceError):
    """Raised inside a running job when the service is shutting down."""


class JobCancelled(ServiceError):
    """Raised inside a running job once it has been cancelled (``POST /jobs/{id}/cancel``),
    at its next progress line, so the work stops instead of running to its end."""


@dataclass
class WorkerContext:
    """What workers need; assembled by the service."""

    settings: Settings
    store: InstanceStore
    queue: JobQueue
    process: ProcessFn
    correct: CorrectFn | None = None
    restore: CorrectFn | None = None
    audit: AuditTrail | None = None  # where deliveries are recorded (dicom-send rows)


def destinations_for(settings: Settings, workflow: Workflow) -> list[Destination | DicomWebDestination]:
    """Configured destinations that want results of ``workflow``."""
    return [d for d in settings.destinations if workflow in d.workflows]


def queue_dispatches(settings: Settings, queue: JobQueue, job: Job, written: Sequence[tuple[str, str]], *,
                     suffix: str = "", progress: Callable[[str], None] | None = None) -> list[int]:
    """One dispatch job per destination of ``job``'s workflow for the ``(kind, path)``
    results it wants; returns their ids: new ones, or those already queued under the same
    key (the same results made again, e.g. by a correction posted again with ``restore``).

    ``suffix`` tells later results of the same job apart (a correction's SEG) in the
    dispatch jobs' keys ``dispatch/<job>/<destination><suffix>``."""
    assert job.workflow is not None
    dispatches = []
    for dest in destinations_for(settings, job.workflow):
        paths = [p for kind, p in written if kind in dest.results]
        if not paths:
            continue
        key = f"dispatch/{job.id}/{dest.name}{suffix}"
        dispatch = queue.enqueue(
            JobKind.DISPATCH, key, study_uid=job.study_uid,
            workflow=job.workflow, payload={"destination": dest.name, "paths": paths},
            max_attempts=settings.retry.dispatch_max_attempts,
        )
        verb = "queued"
        if dispatch is None:
            dispatch, verb = queue.by_key(key), "already queued"
        if dispatch is not None:
            dispatches.append(dispatch.id)
            if progress is not None:
                progress(f"dispatch job {dispatch.id} {verb} for {dest.name} ({len(paths)} objects)")
    return dispatches


def keep_and_dispatch(settings: Settings, store: InstanceStore, queue: JobQueue, job: Job, owner: Job,
                      objects: Sequence[ResultObject], *, suffix: str = "",
                      progress: Callable[[str], None]) -> tuple[list[tuple[str, str]], list[int] | None]:
    """Write ``objects`` durably with the results of ``owner`` (the processing job), then,
    while ``job`` (the one making them) is still running, queue them for the destinations
    (:func:`queue_dispatches` with ``suffix``).

    Returns the ``(kind, path)`` written and the dispatch jobs queued (None when ``job``
    is no longer running: cancelled, its results kept but not sent).
    """
    written = [(obj.kind, str(store.write_result(owner.id, obj.sop_instance_uid, obj.write))) for obj in objects]
    progress(f"wrote {len(written)} result objects")
    current = queue.get(job.id)
    if current is None or current.state is not JobState.RUNNING:
        progress("job no longer running (cancelled); results not dispatched")
        return written, None
    dispatches = queue_dispatches(settings, queue, owner, written, suffix=suffix, progress=progress)
    if not settings.destinations:
        progress("no destinations configured: results kept in storage only")
    return written, dispatches


def run_process_job(ctx: WorkerContext, job: Job, progress: Callable[[str], None]) -> dict:
    """Run a processing job: pipeline, durable results, one dispatch job per destination.

    Returns the job's JSON result summary.
    """
    if job.workflow is None:
        raise InputError("processing job without a workflow")
    output = ctx.process(job, progress)
    written, dispatches = keep_and_dispatch(ctx.settings, ctx.store, ctx.queue, job, job, output.objects,
                                            progress=progress)
    if dispatches is None:
        return {"summary": output.summary, "results": written}
    return {"summary": output.summary, "results": written, "dispatch_jobs": dispatches}


def run_correct_job(ctx: WorkerContext, job: Job, progress: Callable[[str], None]) -> dict:
    """Run a doctor-in-the-loop correction job (:mod:`dicom_service.jobs.correction`)."""
    if ctx.correct is None:
        raise InputError("this node runs no correction jobs")
    return ctx.correct(job, progress)


def run_restore_job(ctx: WorkerContext, job: Job, progress: Callable[[str], None]) -> dict:
    """Enhance a processed instance again with corrected tooth masks (:mod:`dicom_service.jobs.restore`)."""
    if ctx.restore is None:
        raise InputError("this node runs no restore jobs")
    return ctx.restore(job, progress)


def run_dispatch_job(ctx: WorkerContext, job: Job, progress: Callable[[str], None]) -> dict:
    """Send a job's result files to its destination (raises DispatchError to retry)."""
    name = job.payload.get("destination")
    dest = next((d for d in ctx.settings.destinations if d.name == name), None)
    if dest is None:
        raise InputError(f"destination {name!r} is no longer configured")
    paths = [Path(p) for p in job.payload.get("paths", [])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"result files missing: {', '.join(missing)}")
    dicom = ctx.settings.dicom
    timeouts = SendTimeouts(acse=dicom.acse_timeout, dimse=dicom.dimse_timeout,
                            network=dicom.network_timeout)
    progress(f"sending {len(paths)} objects to {dest.name}")
    try:
        send_results(dest, paths, dicom.ae_title, timeouts)
    except Exception:
        _audit_send(ctx, job, dest.name, len(paths), "failed")
        raise
    _audit_send(ctx, job, dest.name, len(paths), "succeeded")
    return {"sent": len(paths), "destination": dest.name}


def _audit_send(ctx: WorkerContext, job: Job, destination: str, objects: int, outcome: str) -> None:
    """The ``dicom-send`` row of one delivery attempt (:mod:`dicom_service.audit`)."""
    if ctx.audit is not None:
        ctx.audit.record(AuditEvent(kind="dicom-send", actor=ctx.settings.dicom.ae_title, action="send",
                                    outcome=outcome, study_uid=job.study_uid, job_id=job.id,
                                    detail={"destination": destination, "objects": objects,
                                            "attempt": job.attempts}))


class WorkerPool:
    """Threads that claim jobs of some kinds and run them.

    Parameters
    ----------
    ctx : WorkerContext
    kinds : tuple of JobKind
        Which jobs these threads take.
    count : int
        Number of threads.
    name : str
        Thread name prefix (also recorded in the attempt table).
    """

    def __init__(self, ctx: WorkerContext, kinds: Sequence[JobKind], count: int, name: str) -> None:
        self.ctx = ctx
        self.kinds = tuple(kinds)
        self.count = count
        self.name = name
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the threads."""
        for i in range(self.count):
            thread = threading.Thread(target=self._loop, args=(f"{self.name}-{i}",),
                                      name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        """True while every thread of the pool runs."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Ask threads to stop; jobs still running after the grace period go back to the queue."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=grace_seconds / max(1, len(self._threads)))
        with self._lock:
            leftovers = list(self._running.values())
        for job_id in leftovers:
            if self.ctx.queue.release(job_id, "interrupted: service shutting down"):
                log.info("job %d returned to the queue at shutdown", job_id)

    def _progress(self, job: Job) -> Callable[[str], None]:
        def write(text: str) -> None:
            if self._stop.is_set():
                raise JobInterrupted("service shutting down")
            log.info("job %d: %s", job.id, text)
            if not self.ctx.queue.heartbeat_log(job.id, text):
                raise JobCancelled(f"job {job.id} was cancelled")

        return write

    def _loop(self, worker: str) -> None:
        queue = self.ctx.queue
        while not self._stop.is_set():
            try:
                job = queue.claim(self.kinds, worker)
            except Exception:  # noqa: BLE001 - database hiccup: log and keep serving
                log.exception("%s: claiming a job failed", worker)
                job = None
            if job is None:
                due = queue.seconds_until_due(self.kinds)
                poll = self.ctx.settings.workers.poll_seconds
                queue.wait_for_change(max(0.05, poll if due is None else min(due, poll)))
                continue
            with self._lock:
                self._running[worker] = job.id
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running.pop(worker, None)

    def _run(self, job: Job) -> None:
        queue = self.ctx.queue
        progress = self._progress(job)
        runner = {JobKind.PROCESS: run_process_job, JobKind.CORRECT: run_correct_job,
                  JobKind.RESTORE: run_restore_job}.get(job.kind, run_dispatch_job)
        try:
            progress(f"attempt {job.attempts} of {job.max_attempts} started")
            result = runner(self.ctx, job, progress)
        except JobInterrupted:
            if queue.release(job.id, "interrupted: service shutting down"):
                log.info("job %d interrupted by shutdown; back in the queue", job.id)
            else:  # cancelled meanwhile: it stays cancelled
                log.info("job %d interrupted by shutdown (it had been cancelled)", job.id)
            return
        except JobCancelled:
            queue.fail(job.id, CANCELLED_WHILE_RUNNING)  # the job is cancelled: this only ends the attempt
            log.info("job %d stopped: cancelled while running", job.id)
            return
        except InputError as exc:
            state = queue.fail(job.id, f"{type(exc).__name__}: {exc}", permanent=True)
            log.warning("job %d failed permanently (%s): %s", job.id, state.value, exc)
            return
        except DispatchError as exc:
            state = queue.fail(job.id, f"DispatchError: {exc}")
            log.warning("job %d: delivery failed (%s), now %s", job.id, exc, state.value)
            return
        except Exception as exc:  # noqa: BLE001 - an unexpected error is a failed attempt
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            state = queue.fail(job.id, detail)
            log.exception("job %d attempt failed, now %s", job.id, state.value)
            return
        if queue.complete(job.id, result=result):
            log.info("job %d succeeded", job.id)
