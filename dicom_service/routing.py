"""Routing rules and study stability: which instances become which jobs, and when.

A study becomes jobs once no new instance has arrived for ``stability_seconds``. Its
instances not yet routed each get a workflow (first matching rule wins) and a processing
job of their own, whose idempotency key is
``process/<study>/<workflow>/<fingerprint of the SOP Instance UID>``: a study re-sent
with no new instances creates nothing, new instances create jobs for them. One job per
instance, because every result object belongs to one instance: an instance that fails (a
corrupt stream, a malformed VOI LUT) holds back no other of its study, and several
workers can take a study's instances at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence

from dicom_service.config import RetrySettings, RoutingMatch, RoutingRule, RoutingSettings
from dicom_service.domain import InstanceMeta, JobKind, Workflow
from dicom_service.jobs.queue import JobQueue
from dicom_service.node.contexts import INPUT_CLASSES
from dicom_service.storage import InstanceStore

log = logging.getLogger(__name__)

_SC = "1.2.840.10008.5.1.4.1.1.7"


def default_rules() -> list[RoutingRule]:
    """Built-in rules: radiograph classes → radiograph, camera classes → video.

    A single-frame Secondary Capture with modality IO, PX or DX (a scanned or
    exported radiograph) goes to the radiograph workflow; any other Secondary
    Capture is treated as an intraoral photo.
    """
    by_family: dict[str, list[str]] = {}
    for cls in INPUT_CLASSES:
        by_family.setdefault(cls.family, []).append(cls.uid)
    return [
        RoutingRule(name="radiograph-classes", workflow=Workflow.RADIOGRAPH,
                    match=RoutingMatch(sop_class=by_family["radiograph"])),
        RoutingRule(name="radiograph-secondary-capture", workflow=Workflow.RADIOGRAPH,
                    match=RoutingMatch(sop_class=[_SC], modality=["IO", "PX", "DX"])),
        RoutingRule(name="camera-classes", workflow=Workflow.VIDEO,
                    match=RoutingMatch(sop_class=by_family["video"] + by_family["photo"])),
    ]


def _matches(match: RoutingMatch, meta: InstanceMeta) -> bool:
    """True if every non-empty condition of ``match`` holds (text compared case-insensitively)."""
    if match.sop_class and meta.sop_class_uid not in match.sop_class:
        return False
    for allowed, value in (
        (match.modality, meta.modality),
        (match.calling_ae, meta.calling_ae),
        (match.body_part, meta.body_part),
    ):
        if allowed and value.strip().upper() not in {a.strip().upper() for a in allowed}:
            return False
    return True


def choose_workflow(meta: InstanceMeta, rules: Sequence[RoutingRule], default: Workflow) -> Workflow:
    """The workflow of the first rule that matches ``meta``, else ``default``."""
    for rule in rules:
        if _matches(rule.match, meta):
            return rule.workflow
    return default


def job_key(study_uid: str, workflow: Workflow, sop_uids: Sequence[str]) -> str:
    """Idempotency key of a processing job for this set of instances."""
    digest = hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()[:20]
    return f"process/{study_uid}/{workflow.value}/{digest}"


class Router:
    """Turns stable studies into processing jobs.

    Parameters
    ----------
    settings : RoutingSettings
    retry : RetrySettings
    store : InstanceStore
    queue : JobQueue
    """

    def __init__(
        self, settings: RoutingSettings, retry: RetrySettings, store: InstanceStore, queue: JobQueue
    ) -> None:
        self.settings = settings
        self.rules = list(settings.rules) if settings.rules is not None else default_rules()
        self.retry = retry
        self.store = store
        self.queue = queue
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """Tell the router an instance arrived (it re-checks its timers)."""
        self._wake.set()

    def route_stable(self, now: float | None = None) -> int:
        """Create jobs for every study that is stable at ``now``; return how many."""
        now = time.time() if now is None else now
        created = 0
        for study_uid in self.store.stable_studies(self.settings.stability_seconds, now):
            created += self._route_study(study_uid, now)
        return created

    def _route_study(self, study_uid: str, now: float) -> int:
        # under the study's lock, as its stores and its removal (retention.remove_study):
        # a job is never made for an instance that a removal is purging
        with self.store.study_lock(study_uid):
            return self._route_study_locked(study_uid, now)

    def _route_study_locked(self, study_uid: str, now: float) -> int:
        sops, created, ignored = [], 0, 0
        for meta in self.store.unrouted_instances(study_uid):
            sop = meta.sop_instance_uid
            sops.append(sop)
            workflow = choose_workflow(meta, self.rules, self.settings.default_workflow)
            if workflow is Workflow.IGNORE:
                ignored += 1
                continue
            job = self.queue.enqueue(
                JobKind.PROCESS, job_key(study_uid, workflow, [sop]), study_uid=study_uid,
                workflow=workflow, payload={"sop_instance_uids": [sop]},
                max_attempts=self.retry.max_attempts,
            )
            if job is not None:
                created += 1
                log.info("study %s: job %d (%s) queued for instance %s", study_uid, job.id, workflow.value, sop)
        if ignored:
            log.info("study %s: %d instances ignored by routing", study_uid, ignored)
        self.store.mark_routed(study_uid, sops, up_to=now)
        return created

    # ------------------------------------------------------------------ background loop
    def _next_wait(self) -> float:
        pending = self.store.next_stable_time(self.settings.stability_seconds)
        if pending is None:
            return 5.0
        return min(5.0, max(0.05, pending - time.time()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.route_stable()
            except Exception:  # noqa: BLE001 - keep the loop alive, the error is logged
                log.exception("routing pass failed; retrying")
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def start(self) -> None:
        """Run the routing loop in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="router", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
