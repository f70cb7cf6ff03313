"""Removing a study (``DELETE /studies/{uid}``) against the real service process: while
instances of the same study arrive on several associations at once, and with a
``kill -9`` in the middle of the purge.

What a PACS administrator expects, checked here once everything has settled:

* every C-STORE answered 0x0000 is either still held (indexed, its file on disk, counted
  by ``GET /studies``) or was removed by a DELETE that answered 200 after that store
  began; and a DELETE that was sent after a store's answer and answered 200 removed it;
* no file without an index row, no index row without its file, no result folder of a
  removed study's jobs, nothing left in the purge journal or in ``tmp/``;
* no job refers to a removed instance unless it is retired (a record); a removed study's
  jobs had all ended before it was removed (none changed after, none failed for want of
  its instance: the input is good, so every job succeeds); none stays queued or running;
* the service stays up and answers; no request answers 500.

Before the removal's checks held the study's lock (``InstanceStore.study_lock``, also
held by routing), the stress test caught a job made for an instance being removed in
about half its runs: the job failed, or ran and left results of the removed study behind.

The index and the job store are read with :mod:`sqlite3`, read-only.
"""

from __future__ import annotations

import copy
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from dicom_service.jobs.queue import RETIRED_KEY
from dicom_service.uids import new_uid
from tests import builders
from tests.dicomnet import associate, echo_ok
from tests.integration.node import NodeProcess
from tests.integration.orthanc import NODE_AET
from tests.integration.tools import wait_until

pytestmark = pytest.mark.integration

#: Instances sent by this calling AE title are stored and ignored by routing (no job);
#: the others are processed (cheap: small radiographs, the classical baseline runtime), so
#: the study has jobs and results. Routing as soon as an instance is stored.
BULK_AET = "BULK"
SETTINGS = {
    "routing": {"stability_seconds": 0.0, "rules": [
        {"name": "bulk", "workflow": "ignore", "match": {"calling_ae": [BULK_AET]}},
        {"name": "radiographs", "workflow": "radiograph", "match": {"modality": ["IO"]}},
    ]},
    "models": {"radiograph": "baseline", "video": "baseline"},
    "storage": {"fsync": True},
}


# --------------------------------------------------------------------------- read-only views of the node's files
def _read(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return conn.execute(sql).fetchall()


def indexed(storage: Path) -> dict[str, tuple[str, Path]]:
    """SOP Instance UID → (study, path) of every indexed instance."""
    rows = _read(storage / "index.sqlite3", "SELECT sop_instance_uid, study_uid, path FROM instances")
    return {str(sop): (str(study), Path(path)) for sop, study, path in rows}


def journal_length(storage: Path) -> int:
    """Rows of the purge journal (folders a purge still has to delete)."""
    return int(_read(storage / "index.sqlite3", "SELECT COUNT(*) FROM purge_files")[0][0])


@dataclass(frozen=True)
class StoredJob:
    id: int
    key: str
    study_uid: str
    state: str
    updated_at: float
    sops: tuple[str, ...]

    @property
    def retired(self) -> bool:
        return RETIRED_KEY in self.key

    @property
    def removed_at(self) -> float | None:
        """When its study was removed (the time in its retired key), or None."""
        return float(self.key.rpartition(RETIRED_KEY)[2]) if self.retired else None


def stored_jobs(storage: Path) -> list[StoredJob]:
    rows = _read(storage / "jobs.sqlite3", "SELECT id, key, study_uid, state, updated_at, payload FROM jobs")
    return [StoredJob(int(i), str(k), str(s), str(st), float(u), tuple(json.loads(p).get("sop_instance_uids", [])))
            for i, k, s, st, u, p in rows]


def files_under(folder: Path) -> set[Path]:
    return {Path(d) / f for d, _, names in os.walk(folder) for f in names}


def check_consistent(node: NodeProcess) -> dict[str, tuple[str, Path]]:
    """Assert the index, the disk, ``GET /studies`` and the jobs agree; return the index."""
    storage = node.storage_path
    index = indexed(storage)
    on_disk = files_under(storage / "instances")
    rows = {path for _, path in index.values()}
    assert on_disk - rows == set(), "files without an index row"
    assert rows - on_disk == set(), "index rows without their file"
    assert files_under(storage / "tmp") == set()
    assert journal_length(storage) == 0
    listed = node.client.get("/studies", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    per_study: dict[str, int] = {}
    for study, _ in index.values():
        per_study[study] = per_study.get(study, 0) + 1
    assert {s["study_uid"]: s["instances"] for s in listed.json()} == per_study
    jobs = stored_jobs(storage)
    assert [j for j in jobs if j.state in ("queued", "running")] == []
    for job in jobs:
        if job.retired:
            assert not (storage / "results" / str(job.id)).exists(), f"results of removed job {job.id} left"
            # a study is removed only once its jobs have ended: none ran (or failed) after
            assert job.removed_at is not None and job.updated_at <= job.removed_at, (
                f"job {job.id} ({job.state}) of a removed study changed after the removal")
        else:
            assert set(job.sops) <= set(index), f"job {job.id} ({job.state}) names removed instances"
    by_id = {j.id: j for j in jobs}
    for folder in (storage / "results").iterdir():
        assert int(folder.name) in by_id and not by_id[int(folder.name)].retired, f"orphan results {folder}"
    return index


# --------------------------------------------------------------------------- test data
def instances(template: Dataset, study_uid: str, count: int, *, series_uid: str | None = None) -> list[Dataset]:
    """``count`` copies of ``template`` in ``study_uid`` with new SOP Instance UIDs."""
    out = []
    for _ in range(count):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid or new_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
        out.append(ds)
    return out


def send(node: NodeProcess, datasets: list[Dataset], calling: str) -> None:
    """C-STORE ``datasets`` over one association; every one must succeed."""
    ds0 = datasets[0]
    assoc = associate(node.dicom_port, [(str(ds0.SOPClassUID), [str(ds0.file_meta.TransferSyntaxUID)])],
                      calling=calling, called=NODE_AET)
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0] * len(datasets)
    finally:
        assoc.release()


def send_at_once(node: NodeProcess, datasets: list[Dataset], calling: str, associations: int) -> None:
    """:func:`send` over several associations at once."""
    errors: list[BaseException] = []

    def one(part: list[Dataset]) -> None:
        try:
            send(node, part, calling)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(datasets[i::associations],)) for i in range(associations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]


def settled(node: NodeProcess, study_uids: list[str]) -> bool:
    """No job queued or running, and none of the studies waits for routing."""
    if any(j["state"] in ("queued", "running") for j in node.jobs()):
        return False
    for uid in study_uids:
        got = node.client.get(f"/studies/{uid}")
        if got.status_code == 200 and got.json()["pending"]:
            return False
        assert got.status_code in (200, 410), got.text
    return True


@pytest.fixture
def template() -> Dataset:
    """A small intra-oral radiograph: stored in a few ms, processed in well under a second."""
    return builders.make_intraoral_radiograph(implants=1, rows=96, cols=96, seed=5)


# --------------------------------------------------------------------------- (a) stores and deletes at once
@dataclass(frozen=True)
class Store:
    sop: str
    began: float
    answered: float
    status: int


@dataclass(frozen=True)
class Delete:
    sent: float
    answered: float
    status: int
    detail: str


def test_stores_and_deletes_of_one_study_at_once_lose_nothing_and_leave_no_orphans(
    node_factory: Callable[..., NodeProcess], template: Dataset,
) -> None:
    """Four associations send bursts of one study (three ignored by routing, one processed)
    while another client deletes the study as often as it can; a second study is left alone."""
    node = node_factory(settings=SETTINGS).start()
    study, other = new_uid(), new_uid()
    send(node, instances(template, other, 1), "TESTSCU")
    send(node, instances(template, other, 3), BULK_AET)
    wait_until(lambda: settled(node, [other]), 60, what="the other study processed", alive=node.check_alive)
    other_index = {sop: v for sop, v in indexed(node.storage_path).items() if v[0] == other}
    other_results = files_under(node.storage_path / "results")
    assert len(other_index) == 4 and other_results

    # (calling AE, instances, burst, longest pause): bursts, so that the study is now and
    # then routed and deletable; the processed instances one by one, so that a job is not
    # always running (a running job refuses the delete)
    clients = [(BULK_AET, 70, 5, 0.1), (BULK_AET, 70, 5, 0.1), (BULK_AET, 70, 5, 0.1), ("TESTSCU", 25, 1, 0.3)]
    stores: list[Store] = []
    deletes: list[Delete] = []
    errors: list[str] = []
    lock = threading.Lock()
    storing = threading.Barrier(len(clients) + 1, timeout=60)
    first_done, all_done = threading.Event(), threading.Event()
    running = [len(clients)]

    def client(calling: str, count: int, burst: int, pause_max: float, seed: int) -> None:
        rng, pause = random.Random(seed), threading.Event()
        datasets = instances(template, study, count, series_uid=new_uid())
        ds0 = datasets[0]
        assoc = associate(node.dicom_port, [(str(ds0.SOPClassUID), [str(ds0.file_meta.TransferSyntaxUID)])],
                          calling=calling, called=NODE_AET)
        try:
            storing.wait()
            assert assoc.is_established
            for i, ds in enumerate(datasets):
                began = time.monotonic()
                status = int(assoc.send_c_store(ds).Status)
                with lock:
                    stores.append(Store(str(ds.SOPInstanceUID), began, time.monotonic(), status))
                if i % burst == burst - 1:
                    pause.wait(rng.uniform(pause_max / 4, pause_max))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(f"{calling}: {type(exc).__name__}: {exc}")
            storing.abort()
        finally:
            if assoc.is_established:
                assoc.release()
            with lock:
                running[0] -= 1
                first_done.set()
                if not running[0]:
                    all_done.set()

    def deleter() -> None:
        pace = threading.Event()
        deadline, wins = time.monotonic() + 60, 0
        with httpx.Client(base_url=node.url, timeout=30,
                          headers={"Authorization": f"Bearer {node.token}"}) as http:
            storing.wait()
            # until the first client is done (the others' last stores then stay), with a
            # few removals; or, if the study was never free, until one after the last store
            while not (first_done.is_set() and (wins >= 3 or all_done.is_set() and wins)):
                if time.monotonic() > deadline:
                    errors.append("deleter: the study was never removed")
                    return
                sent = time.monotonic()
                got = http.delete(f"/studies/{study}", params={"discard_undelivered": True})
                deletes.append(Delete(sent, time.monotonic(), got.status_code, got.text[:200]))
                wins += got.status_code == 200
                pace.wait(0.005)

    threads = [threading.Thread(target=client, args=(*c, i)) for i, c in enumerate(clients)]
    remover = threading.Thread(target=deleter)
    for thread in [*threads, remover]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    remover.join(timeout=60)
    assert errors == []
    assert len(stores) == sum(c[1] for c in clients) and all(s.status == 0 for s in stores)

    statuses = {code: sum(1 for d in deletes if d.status == code) for code in {d.status for d in deletes}}
    # 404 before the first store; 409 while the study waits for routing or a job runs
    assert set(statuses) <= {200, 404, 409, 410}, [d for d in deletes if d.status not in (200, 404, 409, 410)]
    removed = [d for d in deletes if d.status == 200]
    # the race was really run: removals while stores went on, and refusals
    assert any(d.answered < max(s.began for s in stores) for d in removed) and statuses.get(409), statuses

    wait_until(lambda: settled(node, [study, other]), 90, interval=0.2, what="every job ended",
               alive=node.check_alive)
    index = check_consistent(node)
    # the input is all good: a job fails only if a removal took its instance from under it
    # (the removal is refused while a job is queued or running)
    failed = [j for j in stored_jobs(node.storage_path) if j.state != "succeeded"]
    assert failed == [], f"jobs that did not succeed: {failed}"
    for s in stores:
        held = s.sop in index
        if not held:
            assert any(d.answered > s.began for d in removed), f"{s} lost: no successful DELETE after it"
        else:
            assert not any(d.sent > s.answered for d in removed), f"{s} kept by a later successful DELETE"
    # the other study is whole: its instances, their files and its results
    assert {sop: v for sop, v in index.items() if v[0] == other} == other_index
    assert other_results <= files_under(node.storage_path / "results")
    assert echo_ok(node.dicom_port)
    assert node.client.get("/readyz").status_code == 200
    node.check_alive()
    print(f"{len(stores)} stores, {len(deletes)} deletes {statuses}, "
          f"{sum(1 for s in stores if s.sop in index)} instances still held")


# --------------------------------------------------------------------------- (b) kill -9 during the purge
@pytest.mark.slow
def test_a_purge_killed_mid_way_is_finished_at_the_next_start(
    node_factory: Callable[..., NodeProcess], template: Dataset,
) -> None:
    """A study of a few hundred instances (fsync on) is deleted; the node is killed with
    SIGKILL once the purge journal shows the purge under way, and restarted: the purge
    finishes at the start, other studies untouched."""
    node = node_factory(settings=SETTINGS).start()
    study, other = new_uid(), new_uid()
    send(node, instances(template, study, 2), "TESTSCU")  # processed: the study gets results
    send(node, instances(template, other, 1), "TESTSCU")
    bulk = [*instances(template, study, 150), *(ds for _ in range(30) for ds in instances(template, study, 5,
                                                                                           series_uid=new_uid()))]
    send_at_once(node, bulk, BULK_AET, 3)  # a few hundred files in 31 series: a purge that takes a while
    send(node, instances(template, other, 3), BULK_AET)
    wait_until(lambda: settled(node, [study, other]), 90, what="both studies processed", alive=node.check_alive)
    storage = node.storage_path
    before = indexed(storage)
    study_files = {path for s, path in before.values() if s == study}
    other_files = {path for s, path in before.values() if s == other}
    jobs = stored_jobs(storage)
    study_results = [storage / "results" / str(j.id) for j in jobs if j.study_uid == study]
    other_results = set().union(*(files_under(storage / "results" / str(j.id)) for j in jobs
                                  if j.study_uid == other))
    assert len(study_files) == 302 and all(p.is_dir() for p in study_results) and other_results

    answer: list[Any] = []

    def delete() -> None:
        try:
            answer.append(httpx.delete(f"{node.url}/studies/{study}", timeout=60,
                                       headers={"Authorization": f"Bearer {node.token}"}))
        except httpx.TransportError as exc:  # the kill cuts the request: expected
            answer.append(exc)

    request = threading.Thread(target=delete)
    request.start()
    wait_until(lambda: journal_length(storage) > 0, 30, interval=0.001, what="the purge journal written",
               alive=node.check_alive)
    node.kill9()
    request.join(timeout=30)
    assert answer and not isinstance(answer[0], httpx.Response), "the purge ended before the kill"
    # killed mid-way: the index rows are gone, the journal is not, files are left
    assert journal_length(storage) > 0
    assert not any(s == study for s, _ in indexed(storage).values())
    assert any(p.exists() for p in study_files), "no file left at the kill: not mid-way"

    node.start()  # same ports, same storage
    assert journal_length(storage) == 0
    assert not any(p.exists() for p in study_files) and not (storage / "instances" / study).exists()
    assert not any(p.exists() for p in study_results)
    gone = node.client.get(f"/studies/{study}")
    assert gone.status_code == 410, gone.text
    after = indexed(storage)
    assert {sop: v for sop, v in after.items() if v[0] == other} == {
        sop: v for sop, v in before.items() if v[0] == other}
    assert all(p.is_file() for p in other_files) and all(p.is_file() for p in other_results)
    assert all(j.retired for j in stored_jobs(storage) if j.study_uid == study)
    check_consistent(node)
    # the study sent again is a new one, processed again
    send(node, instances(template, study, 1), "TESTSCU")
    wait_until(lambda: settled(node, [study]), 60, what="the study sent again processed", alive=node.check_alive)
    assert node.client.get(f"/studies/{study}").json()["jobs"] == {"succeeded": 1}
