"""Assembles the node: storage, queue, routing, DICOM SCP, workers and vision runtimes."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pydicom import dcmread

from dicom_service.atna.forwarder import AuditForwarder
from dicom_service.atna.lookups import make_forwarder
from dicom_service.audit import AUDIT_FILE, AuditEvent, AuditTrail
from dicom_service.config import Settings, WorkerSettings, make_folder
from dicom_service.domain import InputError, Job, JobKind, Workflow
from dicom_service.jobs.correction import run_correction_job
from dicom_service.jobs.implant_correction import is_implant_review, run_implant_correction_job
from dicom_service.jobs.queue import Backoff
from dicom_service.jobs.restore import run_restore_job
from dicom_service.jobs.sqlite_queue import SQLiteJobQueue
from dicom_service.jobs.worker import WorkerContext, WorkerPool
from dicom_service.malloc_tuning import set_mmap_threshold
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.node.destinations import plain_credentials_warnings
from dicom_service.node.scp import DicomNode, StoredEvent
from dicom_service.pipelines.base import PipelineOutput
from dicom_service.pipelines.radiograph import process_radiographs
from dicom_service.pipelines.video import process_videos
from dicom_service.pipelines.video_memory import video_budget_bytes
from dicom_service.retention import RetentionThread
from dicom_service.routing import Router
from dicom_service.storage import InstanceStore
from dicom_service.tls import check_tls_files
from dicom_service.vision.registry import (
    build_radiograph_runtime,
    build_video_runtime,
    check_compile,
    check_precision,
    check_runtime_names,
    resolve_device,
)
from dicom_service.vision.runtime import RadiographRuntime, VideoRuntime

log = logging.getLogger(__name__)

TOKEN_FILE = "api-token"


def check_audit_repository(settings: Settings) -> None:
    """Warn when patient IDs would travel to the audit record repository unencrypted (its
    TLS files are checked with the others, :func:`~dicom_service.tls.check_tls_files`)."""
    repository = settings.audit_repository
    if repository is None:
        return
    if repository.transport != "tls" and repository.patient_ids:
        log.warning("audit_repository: transport %s is not encrypted and the messages name patients (patient_ids); "
                    "use tls, or patient_ids: false", repository.transport)


def ensure_api_tokens(settings: Settings) -> list[str]:
    """The accepted service tokens: configured ones, or one kept in ``<storage>/api-token``.

    With no service token configured (named users, ``http.users``, or not), and
    authentication not disabled, a random token is created once, written with mode 0600,
    and its location logged (never the token): what already uses it (a metrics scraper)
    keeps working when named users are added.
    """
    if settings.http.tokens:
        return list(settings.http.tokens)
    if settings.http.auth_disabled:
        return []
    path = Path(settings.storage.path) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        log.warning("no http.tokens configured: created an API token in %s", path)
    return [path.read_text().strip()]


class Runtimes:
    """The vision runtimes, built once at start (never on the hot path)."""

    def __init__(self, settings: Settings) -> None:
        self.device = resolve_device(settings.device)
        models = settings.models
        self.video: VideoRuntime = build_video_runtime(models.video, self.device, models.path, models.precision,
                                                       models.compile, models.stabilisation_seconds,
                                                       models.segment_every)
        self.radiograph: RadiographRuntime = build_radiograph_runtime(models.radiograph, self.device, models.path)
        log.info("vision runtimes on %s: video=%s, radiograph=%s", self.device,
                 self.video.info.name, self.radiograph.info.name)


def make_process_fn(store: InstanceStore, runtimes: Runtimes, workers: WorkerSettings | None = None
                    ) -> Callable[[Job, Callable[[str], None]], PipelineOutput]:
    """The function workers call to run a processing job (``workers``: the video memory
    budget and the number of processing workers that share it; None: defaults)."""
    workers = workers or WorkerSettings()

    def process(job: Job, progress: Callable[[str], None]) -> PipelineOutput:
        metas = []
        for uid in job.payload.get("sop_instance_uids", []):
            meta = store.instance(uid)
            if meta is None:
                raise InputError(f"instance {uid} is not in the index")
            metas.append(meta)
        datasets = [dcmread(m.path, defer_size=DEFER_BYTES) for m in metas]  # pixel data read from the file
        progress(f"loaded {len(datasets)} instances")
        if job.workflow is Workflow.VIDEO:
            budget = video_budget_bytes(workers.video_memory_mb, workers.processing)
            return process_videos(datasets, runtimes.video, uid_seed=job.key, progress=progress, memory_budget=budget)
        if job.workflow is Workflow.RADIOGRAPH:
            return process_radiographs(datasets, runtimes.radiograph, uid_seed=job.key, progress=progress)
        raise InputError(f"workflow {job.workflow} has no pipeline")

    return process


class Service:
    """The whole node in one process.

    Parameters
    ----------
    settings : Settings
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        check_runtime_names(settings.models.video, settings.models.radiograph, settings.models.path)
        device = resolve_device(settings.device)
        check_precision(settings.models.precision, device)
        check_compile(settings.models.compile, device)
        make_folder(settings.storage.path, "storage.path")  # a file in the way is named now, not at start()
        repository = settings.audit_repository
        check_tls_files(settings.dicom.tls, settings.http.tls, ((d.name, d.tls) for d in settings.destinations),
                        [("audit_repository.tls", repository.tls if repository is not None else None)])
        plain_credentials_warnings(settings.destinations)
        check_audit_repository(settings)
        self.api_tokens = ensure_api_tokens(settings)
        self.store: InstanceStore | None = None
        self.queue: SQLiteJobQueue | None = None
        #: The audit trail (:mod:`dicom_service.audit`), open while the service runs.
        self.audit: AuditTrail | None = None
        #: Sends the trail to the audit record repository (``audit_repository``), if one is set.
        self.audit_forwarder: AuditForwarder | None = None
        self.router: Router | None = None
        self.node: DicomNode | None = None
        self.pools: list[WorkerPool] = []
        self.runtimes: Runtimes | None = None
        self.retention: RetentionThread | None = None
        #: Instances stored since the start: new ones, and re-sent ones acknowledged without storing.
        self.received = {"new": 0, "duplicate": 0}
        self._counter_lock = threading.Lock()
        self._started = threading.Event()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Open storage and queue, recover interrupted jobs, start every part."""
        s = self.settings
        root = Path(s.storage.path)
        self.store = InstanceStore(root, min_free_bytes=s.storage.min_free_mb * 1024 * 1024,
                                   fsync=s.storage.fsync)
        backoff = Backoff(s.retry.backoff_initial, s.retry.backoff_factor, s.retry.backoff_max)
        self.queue = SQLiteJobQueue(root / "jobs.sqlite3", backoff)
        self.audit = AuditTrail(root / AUDIT_FILE, durable=s.storage.fsync, keep_days=s.storage.audit_days)
        if s.audit_repository is not None:
            self.audit_forwarder = make_forwarder(s.audit_repository, self.audit, self.store,
                                                  ae_title=s.dicom.ae_title, destinations=s.destinations)
            self.audit_forwarder.start()
        else:
            self.audit.forget_forwarding()  # nothing waits to be sent; old rows may go (storage.audit_days)
        set_mmap_threshold(s.workers.malloc_mmap_threshold_kb * 1024)  # before the runtimes allocate
        recovered = self.queue.recover()
        if recovered:
            log.warning("%d jobs interrupted by an earlier stop were returned to the queue", recovered)
        self.runtimes = Runtimes(s)
        self.router = Router(s.routing, s.retry, self.store, self.queue)
        ctx = WorkerContext(settings=s, store=self.store, queue=self.queue,
                            process=make_process_fn(self.store, self.runtimes, s.workers),
                            correct=self._run_correction,
                            restore=partial(run_restore_job, s, self.store, self.queue, self.runtimes.video),
                            audit=self.audit)
        self.pools = [
            # a dentist's restore before the auto-routed studies waiting
            WorkerPool(ctx, (JobKind.RESTORE, JobKind.PROCESS), s.workers.processing, "process"),
            WorkerPool(ctx, (JobKind.CORRECT,), s.workers.corrections, "correct"),
            WorkerPool(ctx, (JobKind.DISPATCH,), s.workers.dispatch, "dispatch"),
        ]
        self.node = DicomNode(s.dicom, self.store, self._on_stored, self.audit)
        if s.storage.retention_days > 0:
            self.retention = RetentionThread(self.store, self.queue, s.storage.retention_days)
            self.retention.start()
        self.router.start()
        for pool in self.pools:
            pool.start()
        self.node.start()
        self._started.set()
        self._record_life("start")
        log.info("service started (storage %s)", root.resolve())

    def _record_life(self, action: str) -> None:
        """The trail's ``application`` row of the node's start or stop (who ran it)."""
        if self.audit is None:
            return
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a container)
            user = f"uid {os.getuid()}"
        self.audit.record(AuditEvent(kind="application", actor=user, action=action, outcome="succeeded",
                                     detail={"ae_title": self.settings.dicom.ae_title, "pid": os.getpid()}))

    def _run_correction(self, job: Job, progress: Callable[[str], None]) -> dict:
        """Run a ``correct`` job: an implant review (:mod:`dicom_service.jobs.implant_correction`)
        or a correction of tooth masks (:mod:`dicom_service.jobs.correction`)."""
        assert self.store is not None and self.queue is not None and self.runtimes is not None
        if is_implant_review(job):
            return run_implant_correction_job(self.settings, self.store, self.queue, self.runtimes.radiograph, job,
                                              progress)
        return run_correction_job(self.settings, self.store, self.queue, self.runtimes.video, job, progress)

    def _on_stored(self, event: StoredEvent) -> None:
        with self._counter_lock:
            self.received["new" if event.new else "duplicate"] += 1
        if event.new and self.router is not None:
            self.router.notify()

    def stop(self) -> None:
        """Stop in order: no new associations, routing, then workers (jobs back to the queue)."""
        if self.node is not None:
            self.node.stop()
        if self.router is not None:
            self.router.stop()
        if self.retention is not None:
            self.retention.stop()
        for pool in self.pools:
            pool.stop()
        if self.audit is not None:  # before the store closes: the forwarder reads patients from it
            self._record_life("stop")
            self.audit.flush()
            if self.audit_forwarder is not None:
                self.audit_forwarder.stop()
                self.audit_forwarder = None
        if self.queue is not None:
            self.queue.close()
        if self.store is not None:
            self.store.close()
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        self._started.clear()
        log.info("service stopped")

    # ------------------------------------------------------------------ status
    def received_counts(self) -> dict[str, int]:
        """Instances stored since the start: ``new``, and ``duplicate`` (re-sent, acknowledged)."""
        with self._counter_lock:
            return dict(self.received)

    def readiness(self) -> dict[str, bool]:
        """Named readiness checks (all True when ready)."""
        started = self._started.is_set()
        return {
            "started": started,
            "dicom_listening": bool(started and self.node is not None and self.node.listening),
            "storage_above_floor": bool(started and self.store is not None and self.store.has_space()),
            "workers_alive": bool(started and self.pools and all(p.alive() for p in self.pools)),
        }
