"""Faults against the real service process: ``kill -9`` during a job, a burst of
simultaneous associations.

The service runs as ``python -m dicom_service serve`` (a subprocess, so it can be killed
with SIGKILL); the index is inspected read-only with :mod:`sqlite3` while it is down.
"""

from __future__ import annotations

import copy
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.presentation import build_context

from dicom_service.uids import new_uid
from tests import builders
from tests.integration.node import NodeProcess
from tests.integration.orthanc import NODE_AET, OrthancServer, result_instances
from tests.integration.tools import echoscu, free_port, storescu, wait_until

pytestmark = pytest.mark.integration

VERIFICATION = "1.2.840.10008.1.1"


def indexed_instances(storage: Path) -> dict[str, Path]:
    """SOP Instance UID → file path of every instance in the node's index (read-only)."""
    uri = f"file:{storage / 'index.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    return {str(uid): Path(path) for uid, path in rows}


@pytest.mark.slow
def test_kill_9_during_a_job_then_restart_completes_it(
    node_factory: Callable[..., NodeProcess], orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    """SIGKILL while a video job runs; after a restart on the same storage the job is
    run again to success, its results reach the PACS, and no accepted instance is lost."""
    pacs_port = free_port()
    node = node_factory(destination_port=pacs_port, stability_seconds=0.5)
    orthanc = orthanc_factory(node_port=node.dicom_port, dicom_port=pacs_port)
    node.start()

    # A radiograph study first (its job may run or finish before the kill), then a
    # video long enough that its job is still running when we kill the process.
    study = new_uid()
    radiographs = [builders.make_intraoral_radiograph(implants=1, seed=20 + i, study_uid=study,
                                                      series_uid=new_uid()) for i in range(3)]
    video = builders.make_video_photographic(frames=240, rows=240, cols=320, seed=9)
    files = [builders.save(ds, tmp_path / "in" / f"io{i}.dcm") for i, ds in enumerate(radiographs)]
    files.append(builders.save(video, tmp_path / "in" / "video.dcm"))
    sent = {str(ds.SOPInstanceUID) for ds in [*radiographs, video]}
    storescu(files, node.dicom_port, called_aet=NODE_AET)  # raises unless every store succeeded

    def video_job_running() -> dict | None:
        for job in node.jobs(kind="process"):
            if job["workflow"] == "video" and job["state"] == "running":
                return job
        return None

    running = wait_until(video_job_running, 90, interval=0.05, what="the video job running",
                         alive=node.check_alive)
    node.kill9()

    on_disk = indexed_instances(node.storage_path)
    assert sent <= set(on_disk), f"lost after kill -9: {sent - set(on_disk)}"
    assert all(on_disk[uid].is_file() for uid in sent)

    node.start()  # same ports, same storage
    done = wait_until(lambda: (j := node.job(running["id"]))["state"] in ("succeeded", "failed", "dead") and j,
                      180, interval=0.5, what="the interrupted video job to finish",
                      alive=node.check_alive)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] >= 2
    wait_until(lambda: all(j["state"] == "succeeded" for j in node.jobs())
               and len(node.jobs(kind="dispatch")) == 4, 120, interval=0.5,  # a job per instance
               what="every job to succeed", alive=node.check_alive)
    video_results = wait_until(
        lambda: (r := result_instances(orthanc, str(video.StudyInstanceUID)))
        and all(len(r.get(k, [])) == 1 for k in ("video", "seg", "sr")) and r,
        60, interval=0.5, what="the video results in Orthanc")
    assert set(video_results) == {"video", "seg", "sr"}
    assert sent <= set(indexed_instances(node.storage_path))


def test_twenty_simultaneous_associations(
    node_factory: Callable[..., NodeProcess], tmp_path: Path,
) -> None:
    """20 associations open at the same moment (max_associations 25) all store; C-ECHO
    still answers afterwards."""
    clients = 20
    node = node_factory(stability_seconds=3600,
                        settings={"dicom": {"max_associations": 25}}).start()
    base = builders.make_intraoral_radiograph(implants=1, rows=256, cols=256, seed=11)
    barrier = threading.Barrier(clients, timeout=60)
    statuses: dict[int, list[int]] = {}
    errors: list[str] = []
    sent: set[str] = set()
    lock = threading.Lock()

    def client(index: int) -> None:
        datasets: list[Dataset] = []
        for _ in range(3):
            ds = copy.deepcopy(base)
            uid = new_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.StudyInstanceUID = ds.SeriesInstanceUID = new_uid()
            datasets.append(ds)
        ae = AE(ae_title=f"SCU{index:02d}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.requested_contexts = [build_context(VERIFICATION),
                                 build_context(str(base.SOPClassUID), [str(base.file_meta.TransferSyntaxUID)])]
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
        try:
            barrier.wait()  # every association is established before anyone stores
            if not assoc.is_established:
                raise ConnectionError("association rejected or aborted")
            codes = [int(assoc.send_c_store(ds).Status) for ds in datasets]
            with lock:
                statuses[index] = codes
                sent.update(str(ds.SOPInstanceUID) for ds in datasets)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(f"client {index}: {type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(statuses) == list(range(clients))
    assert all(codes == [0, 0, 0] for codes in statuses.values()), statuses
    assert len(sent) == 3 * clients
    assert sent <= set(indexed_instances(node.storage_path))
    proc = echoscu(node.dicom_port, called_aet=NODE_AET)
    assert proc.returncode == 0, proc.stderr
    node.check_alive()


def jobs_in_store(storage: Path) -> dict[int, tuple[str, int]]:
    """Job id → (state, attempts) from the node's job store (read-only)."""
    uri = f"file:{storage / 'jobs.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT id, state, attempts FROM jobs").fetchall()
    return {int(i): (str(s), int(a)) for i, s, a in rows}


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_graceful_stop_during_a_job_returns_it_to_the_queue(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, sig: str,
) -> None:
    """Ctrl-C (SIGINT) or SIGTERM while a video job runs: the process exits 0, the job is
    back in ``queued`` (the interrupted attempt is logged and not counted against its
    limit), and after a restart it completes."""
    import signal

    node = node_factory(destination_port=free_port(), stability_seconds=0.2)
    node.start()
    video = builders.make_video_photographic(frames=240, rows=240, cols=320, seed=11)
    storescu([builders.save(video, tmp_path / "v.dcm")], node.dicom_port, called_aet=NODE_AET)
    running = wait_until(
        lambda: next((j for j in node.jobs(kind="process") if j["state"] == "running"), None),
        90, interval=0.05, what="the video job running", alive=node.check_alive)
    proc = node.proc
    number = getattr(signal, sig)
    proc.send_signal(number)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the conventional
    # "terminated by SIGTERM" status is expected there; Ctrl-C exits 0.
    assert proc.wait(timeout=60) in ((0,) if sig == "SIGINT" else (0, -number))
    node.proc = None
    assert "service stopped" in node.log_tail(40)
    state, attempts = jobs_in_store(node.storage_path)[running["id"]]
    assert state == "queued"
    node.start()
    job = wait_until(lambda: (j := node.job(running["id"]))["state"] == "succeeded" and j, 180,
                     interval=0.5, what="the job to succeed after restart", alive=node.check_alive)
    interrupted = [a for a in job["attempt_log"] if a["error"] and "interrupted" in a["error"]]
    assert interrupted, job["attempt_log"]
    assert job["attempts"] <= job["max_attempts"]
