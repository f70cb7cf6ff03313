"""Routing rules and study stability."""

from __future__ import annotations

import time
from pathlib import Path

from dicom_service.config import RetrySettings, RoutingMatch, RoutingRule, RoutingSettings
from dicom_service.domain import InstanceMeta, JobState, Workflow
from dicom_service.jobs.sqlite_queue import SQLiteJobQueue
from dicom_service.routing import Router, choose_workflow, default_rules, job_key
from dicom_service.storage import InstanceStore

VIDEO = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
IO = "1.2.840.10008.5.1.4.1.1.1.3"
SC = "1.2.840.10008.5.1.4.1.1.7"


def _meta(sop_class: str, modality: str = "", ae: str = "PACS", body: str = "",
          sop: str = "1.2.3.4", study: str = "1.2.3") -> InstanceMeta:
    return InstanceMeta(study, "1.2.3.1", sop, sop_class, "1.2.840.10008.1.2.1", modality, body, ae, Path("."))


def test_default_rules() -> None:
    rules = default_rules()
    assert choose_workflow(_meta(IO, "IO"), rules, Workflow.IGNORE) is Workflow.RADIOGRAPH
    assert choose_workflow(_meta(VIDEO, "XC"), rules, Workflow.IGNORE) is Workflow.VIDEO
    assert choose_workflow(_meta(SC, "PX"), rules, Workflow.IGNORE) is Workflow.RADIOGRAPH
    assert choose_workflow(_meta(SC, "OT"), rules, Workflow.IGNORE) is Workflow.VIDEO
    assert choose_workflow(_meta("1.2.840.10008.5.1.4.1.1.2"), rules, Workflow.IGNORE) is Workflow.IGNORE


def test_rule_conditions_are_anded_and_case_insensitive() -> None:
    rules = [RoutingRule(name="pano", workflow=Workflow.RADIOGRAPH,
                         match=RoutingMatch(calling_ae=["pano1"], modality=["px"], body_part=["JAW"]))]
    assert choose_workflow(_meta(SC, "PX", "PANO1", "jaw"), rules, Workflow.IGNORE) is Workflow.RADIOGRAPH
    assert choose_workflow(_meta(SC, "PX", "OTHER", "jaw"), rules, Workflow.IGNORE) is Workflow.IGNORE
    assert choose_workflow(_meta(SC, "DX", "PANO1", "jaw"), rules, Workflow.VIDEO) is Workflow.VIDEO


def test_job_key_ignores_order() -> None:
    assert job_key("1.2", Workflow.VIDEO, ["3", "1"]) == job_key("1.2", Workflow.VIDEO, ["1", "3"])
    assert job_key("1.2", Workflow.VIDEO, ["1"]) != job_key("1.2", Workflow.VIDEO, ["1", "3"])


def test_stable_study_becomes_one_job_per_instance_and_resend_creates_none(tmp_path: Path) -> None:
    """One job per instance (so a corrupt one holds back no other), each with its
    workflow; a study sent again creates nothing."""
    store = InstanceStore(tmp_path)
    queue = SQLiteJobQueue(tmp_path / "jobs.sqlite3")
    router = Router(RoutingSettings(stability_seconds=5), RetrySettings(), store, queue)
    for sop, cls in (("1.2.3.4", IO), ("1.2.3.5", IO), ("1.2.3.6", VIDEO), ("1.2.3.8", VIDEO)):
        store.store(_meta(cls, sop=sop), (b"x",))
    assert router.route_stable() == 0  # not quiet yet
    later = time.time() + 6
    assert router.route_stable(later) == 4
    radiographs = [j.payload["sop_instance_uids"] for j in queue.list() if j.workflow is Workflow.RADIOGRAPH]
    assert sorted(radiographs) == [["1.2.3.4"], ["1.2.3.5"]]
    videos = [j.payload["sop_instance_uids"] for j in queue.list() if j.workflow is Workflow.VIDEO]
    assert sorted(videos) == [["1.2.3.6"], ["1.2.3.8"]]
    # the same instances sent again: nothing new
    store.store(_meta(IO, sop="1.2.3.4"), (b"x",))
    assert router.route_stable(later + 10) == 0
    # a new instance: a new job with only that instance
    store.store(_meta(IO, sop="1.2.3.7"), (b"x",))
    assert router.route_stable(time.time() + 6) == 1
    newest = queue.list(state=JobState.QUEUED)[0]
    assert newest.payload["sop_instance_uids"] == ["1.2.3.7"]
