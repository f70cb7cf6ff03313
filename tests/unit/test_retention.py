"""Retention and removal of studies: the store's purge, the retention rules with a real
job queue, retired jobs, and the /studies API on a running service."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.config import RetrySettings, RoutingSettings
from dicom_service.domain import InstanceMeta, JobKind, JobState, Workflow
from dicom_service.jobs.queue import JobStateConflict, is_retired
from dicom_service.jobs.sqlite_queue import SQLiteJobQueue
from dicom_service.retention import RetentionThread, StudyBusy, expire, remove_study
from dicom_service.routing import Router, job_key
from dicom_service.service import Service
from dicom_service.storage import InstanceStore
from dicom_service.uids import new_uid
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import store as c_store
from tests.integration.tools import free_port, wait_until
from tests.receiver import running_receiver

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
DAY = 86_400.0
IO = "1.2.840.10008.5.1.4.1.1.1.3"


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[InstanceStore, SQLiteJobQueue]]:
    store = InstanceStore(tmp_path / "var")
    queue = SQLiteJobQueue(tmp_path / "var" / "jobs.sqlite3")
    yield store, queue
    queue.close()
    store.close()


def _receive(store: InstanceStore, study: str, count: int = 2) -> list[InstanceMeta]:
    """``count`` instances of a study, stored and marked routed."""
    metas = []
    for _ in range(count):
        meta = InstanceMeta(study, f"{study}.1", new_uid(), IO, "1.2.840.10008.1.2.1", "IO", "", "TESTSCU",
                            Path())
        metas.append(store.store(meta, [b"\0" * 128, b"DICM", b"payload"]).meta)
    store.mark_routed(study, [m.sop_instance_uid for m in metas], up_to=time.time())
    return metas


def _job(queue: SQLiteJobQueue, store: InstanceStore, study: str, kind: JobKind, state: JobState,
         sop: str) -> int:
    job = queue.enqueue(kind, f"{kind.value}/{study}/{sop}", study_uid=study, workflow=Workflow.RADIOGRAPH,
                        payload={"sop_instance_uids": [sop]}, max_attempts=1)
    assert job is not None
    if state is not JobState.QUEUED:
        claimed = queue.claim((kind,), "test")
        assert claimed is not None and claimed.id == job.id
        if state is JobState.SUCCEEDED:
            store.write_result(job.id, new_uid(), b"\0" * 128 + b"DICMresult")
            queue.complete(job.id)
        elif state is JobState.DEAD:
            assert queue.fail(job.id, "destination down") is JobState.DEAD
    return job.id


def test_purge_removes_files_and_rows_of_one_study_only(parts) -> None:
    store, queue = parts
    gone, kept = new_uid(), new_uid()
    gone_metas, kept_metas = _receive(store, gone), _receive(store, kept)
    job = _job(queue, store, gone, JobKind.PROCESS, JobState.SUCCEEDED, gone_metas[0].sop_instance_uid)
    result_dir = store.root / "results" / str(job)
    assert any(result_dir.iterdir())
    report = store.purge_study(gone, [job], "test")
    assert (report.instances, report.results) == (2, 1) and report.bytes > 0
    assert not any(m.path.exists() for m in gone_metas) and not result_dir.exists()
    assert all(m.path.exists() for m in kept_metas)
    assert [s.study_uid for s in store.studies()] == [kept]
    assert store.purged(gone) == report and store.purged(kept) is None
    assert store.instance(gone_metas[0].sop_instance_uid) is None
    # a purge a kill interrupted is finished by the next one (missing files skipped)
    assert store.purge_study(gone, [job], "again").instances == 0
    # the study received again afterwards is new and kept whole
    again = store.store(gone_metas[0], [b"\0" * 128, b"DICM", b"payload"])
    assert again.new and again.meta.path.exists()


def test_retention_removes_only_finished_delivered_quiet_studies(parts) -> None:
    store, queue = parts
    done, undelivered, busy, pending = new_uid(), new_uid(), new_uid(), new_uid()
    for study in (done, undelivered, busy):
        sop = _receive(store, study)[0].sop_instance_uid
        _job(queue, store, study, JobKind.PROCESS, JobState.SUCCEEDED, sop)
    _job(queue, store, done, JobKind.DISPATCH, JobState.SUCCEEDED, "d")
    dead = _job(queue, store, undelivered, JobKind.DISPATCH, JobState.DEAD, "d")
    _job(queue, store, busy, JobKind.DISPATCH, JobState.QUEUED, "d")
    store.store(InstanceMeta(pending, f"{pending}.1", new_uid(), IO, "1.2.840.10008.1.2.1", "IO", "", "X", Path()),
                [b"x"])  # received, not yet routed
    assert expire(store, queue, retention_days=30) == []  # nothing is 30 days old yet
    removed = expire(store, queue, retention_days=30, now=time.time() + 31 * DAY)
    assert [r.study_uid for r in removed] == [done]
    assert {s.study_uid for s in store.studies()} == {undelivered, busy, pending}
    # a cancelled delivery is still undelivered (it can be retried): the study stays
    queue.retry(dead)
    queue.cancel(dead)
    assert expire(store, queue, 30, now=time.time() + 31 * DAY) == []
    # once delivered, the study goes too
    queue.retry(dead)
    claimed = [queue.claim((JobKind.DISPATCH,), "test") for _ in range(2)]  # the busy study's too
    assert dead in [j.id for j in claimed]
    queue.complete(dead)
    for job in claimed:
        if job.id != dead:
            queue.release(job.id, "test")  # back to queued: that study stays busy
    assert [r.study_uid for r in expire(store, queue, 30, now=time.time() + 31 * DAY)] == [undelivered]


def test_removed_study_jobs_are_records_and_the_study_can_come_back(parts, make_settings) -> None:
    store, queue = parts
    study = new_uid()
    sop = _receive(store, study, count=1)[0].sop_instance_uid
    key = job_key(study, Workflow.RADIOGRAPH, [sop])
    job = queue.enqueue(JobKind.PROCESS, key, study_uid=study, workflow=Workflow.RADIOGRAPH,
                        payload={"sop_instance_uids": [sop]}, max_attempts=1)
    queue.claim((JobKind.PROCESS,), "t")
    queue.fail(job.id, "bad input", permanent=True)
    waiting = _job(queue, store, study, JobKind.DISPATCH, JobState.QUEUED, "x")
    with pytest.raises(StudyBusy, match=f"job\\(s\\) {waiting} \\(queued\\).*cancel them first"):
        remove_study(store, queue, study, reason="test")
    queue.cancel(waiting)
    with pytest.raises(StudyBusy, match="never delivered"):  # a cancelled delivery can still be retried
        remove_study(store, queue, study, reason="test")
    remove_study(store, queue, study, reason="test", discard_undelivered=True)
    assert queue.get(job.id).state is JobState.FAILED  # kept as a record
    with pytest.raises(JobStateConflict, match="files were removed"):
        queue.retry(job.id)
    # the same instance sent again is processed again: a new job, the old key was freed
    settings = make_settings()
    store.store(InstanceMeta(study, f"{study}.1", sop, IO, "1.2.840.10008.1.2.1", "IO", "", "X", Path()), [b"x"])
    router = Router(settings.routing, settings.retry, store, queue)
    assert router.route_stable(time.time() + 60) == 1
    assert queue.by_key(key).id != job.id


def test_retention_thread_runs_passes(parts) -> None:
    store, queue = parts
    study = new_uid()
    _job(queue, store, study, JobKind.PROCESS, JobState.SUCCEEDED, _receive(store, study)[0].sop_instance_uid)
    thread = RetentionThread(store, queue, retention_days=0.5 / DAY, interval=0.05)
    thread.start()
    try:
        wait_until(lambda: store.purged(study) is not None, 20.0, interval=0.05, what="the retention pass")
    finally:
        thread.stop()
    assert store.studies() == []


def test_studies_api_lists_and_removes(make_settings) -> None:
    with running_receiver() as pacs:
        settings = make_settings(
            models={"radiograph": "baseline"}, retry={"dispatch_max_attempts": 1},
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                          {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port()}])
        with TestClient(create_app(Service(settings))) as client:
            ds = builders.make_intraoral_radiograph()
            study = str(ds.StudyInstanceUID)
            assert c_store(client.app.state.service.node.port, ds) == 0

            def dispatches_done() -> bool:
                jobs = client.get("/jobs", params={"kind": "dispatch"}, headers=AUTH).json()
                return len(jobs) == 2 and all(j["state"] in ("succeeded", "dead") for j in jobs)

            wait_until(dispatches_done, 60.0, interval=0.1, what="both dispatch jobs to end")
            listed = client.get("/studies", headers=AUTH).json()
            assert [s["study_uid"] for s in listed] == [study] and listed[0]["instances"] == 1
            detail = client.get(f"/studies/{study}", headers=AUTH).json()
            assert detail["jobs"] == {"succeeded": 2, "dead": 1}
            refused = client.delete(f"/studies/{study}", headers=AUTH)
            assert refused.status_code == 409 and "never delivered" in refused.json()["detail"]
            removed = client.delete(f"/studies/{study}", params={"discard_undelivered": True}, headers=AUTH)
            assert removed.status_code == 200, removed.text
            assert removed.json()["instances"] == 1 and removed.json()["results"] >= 4
            assert client.get(f"/studies/{study}", headers=AUTH).status_code == 410
            assert client.delete(f"/studies/{study}", headers=AUTH).status_code == 410
            assert client.get("/studies", headers=AUTH).json() == []
            assert client.get(f"/studies/{new_uid()}", headers=AUTH).status_code == 404
            assert client.get("/studies/1.2.x", headers=AUTH).status_code == 422
            assert client.delete(f"/studies/{study}").status_code == 401
            dead = client.get("/jobs", params={"state": "dead"}, headers=AUTH).json()[0]
            retried = client.post(f"/jobs/{dead['id']}/retry", headers=AUTH)
            assert retried.status_code == 409 and "files were removed" in retried.json()["detail"]
            assert not any(client.app.state.service.store.root.joinpath("instances").iterdir())


class _KilledAfterCommit(InstanceStore):
    """A store whose purge stops where a kill after its transaction would stop it."""

    def _finish_purges(self, folders: list[Path] | None = None) -> None:
        if getattr(self, "killed", False):
            return
        super()._finish_purges(folders)


def test_a_purge_killed_after_its_transaction_is_finished_at_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "var"
    store = _KilledAfterCommit(root)
    study = new_uid()
    metas = _receive(store, study)
    store.killed = True
    store.purge_study(study, [], "test")
    assert all(m.path.exists() for m in metas)  # the files outlived the "kill"...
    assert store.studies() == [] and store.instance(metas[0].sop_instance_uid) is None  # ...the rows did not
    store.close()
    reopened = InstanceStore(root)  # the next start
    try:
        assert not any(m.path.exists() for m in metas)
        assert reopened.db.query("SELECT COUNT(*) AS n FROM purge_files")[0]["n"] == 0
        # the same instance sent again is a new one, stored whole
        again = reopened.store(metas[0], [b"\0" * 128, b"DICM", b"payload"])
        assert again.new and again.meta.path.exists()
    finally:
        reopened.close()


def test_a_purge_deletes_only_its_own_folders(parts) -> None:
    """Another study's purge runs beside this one (its journal rows are there, under its
    own lock) and a new copy of that study was stored in the folder since: not ours to delete."""
    store, _ = parts
    gone, other = new_uid(), new_uid()
    _receive(store, gone)
    kept = _receive(store, other, count=1)[0]
    with store.db.transaction() as conn:  # as the other purge left it between its commit and its rmtree
        conn.execute("INSERT INTO purge_files VALUES (?)", (str(store.root / "instances" / other),))
    store.purge_study(gone, [], "test")
    assert kept.path.is_file() and store.instance(kept.sop_instance_uid) is not None
    assert store.db.query("SELECT COUNT(*) AS n FROM purge_files")[0]["n"] == 1  # the other's to finish


def test_a_removal_holds_the_study_so_no_store_or_routing_comes_between(parts) -> None:
    """A store and the routing of the study wait for a removal that has begun its checks; the
    instance they bring is a new copy of the study, its job not retired, nothing purged."""
    store, queue = parts
    study = new_uid()
    _receive(store, study, count=1)
    router = Router(RoutingSettings(stability_seconds=0, rules=[], default_workflow=Workflow.RADIOGRAPH),
                    RetrySettings(), store, queue)
    late = InstanceMeta(study, f"{study}.2", new_uid(), IO, "1.2.840.10008.1.2.1", "IO", "", "TESTSCU", Path())
    arrived = threading.Event()

    def arrive() -> None:
        store.store(late, [b"\0" * 128, b"DICM", b"late"])
        router.route_stable()
        arrived.set()

    retire = queue.retire_study

    def retire_while_one_arrives(study_uid: str, removed_at: float) -> int:
        threading.Thread(target=arrive).start()
        assert not arrived.wait(0.3)  # blocked by the removal's lock
        return retire(study_uid, removed_at)

    queue.retire_study = retire_while_one_arrives  # type: ignore[method-assign]
    report = remove_study(store, queue, study, reason="test")
    assert report.instances == 1
    assert arrived.wait(10)
    kept = store.instance(late.sop_instance_uid)
    assert kept is not None and kept.path.is_file()
    jobs = queue.list(study_uid=study)
    assert [j.payload["sop_instance_uids"] for j in jobs] == [[late.sop_instance_uid]]
    assert not is_retired(jobs[0])


def test_an_indexed_instance_whose_file_is_gone_is_stored_again(parts) -> None:
    store, _ = parts
    meta = _receive(store, new_uid(), count=1)[0]
    meta.path.unlink()
    outcome = store.store(meta, [b"\0" * 128, b"DICM", b"payload"])
    assert not outcome.new and outcome.meta.path.exists()  # acknowledged, and kept this time


def test_removal_refuses_a_study_still_arriving_and_keeps_knowing_our_results(parts) -> None:
    store, queue = parts
    arriving = new_uid()
    store.store(InstanceMeta(arriving, f"{arriving}.1", new_uid(), IO, "1.2.840.10008.1.2.1", "IO", "", "X",
                             Path()), [b"x"])
    with pytest.raises(StudyBusy, match="still arriving or wait for routing"):
        remove_study(store, queue, arriving, reason="test")
    # our results sent back after their study was removed are still ours: never processed
    study = new_uid()
    job = _job(queue, store, study, JobKind.PROCESS, JobState.SUCCEEDED, _receive(store, study)[0].sop_instance_uid)
    result_uid = store.db.query("SELECT sop_instance_uid FROM own_results WHERE job_id = ?", (job,))[0][0]
    remove_study(store, queue, study, reason="test")
    back = store.store(InstanceMeta(study, f"{study}.9", result_uid, IO, "1.2.840.10008.1.2.1", "IO", "", "PACS",
                                    Path()), [b"x"])
    assert not back.new and store.studies() == [s for s in store.studies() if s.study_uid != study]


def test_a_removal_killed_between_its_two_databases_is_finished_later(parts) -> None:
    store, queue = parts
    study = new_uid()
    sop = _receive(store, study, count=1)[0].sop_instance_uid
    job = _job(queue, store, study, JobKind.PROCESS, JobState.SUCCEEDED, sop)
    queue.retire_study(study, time.time())  # the kill came after this, before the purge
    with pytest.raises(JobStateConflict):
        queue.retry(job)
    assert [r.study_uid for r in expire(store, queue, 30, now=time.time() + 31 * DAY)] == [study]
    assert store.purged(study) is not None
