"""Doctor-in-the-loop over HTTP: a box or clicks on one frame → an amended tooth SEG sent to the PACS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from pydicom import dcmread

from dicom_service.api.app import create_app
from dicom_service.api.routers.corrections import _requeued, processing_job
from dicom_service.domain import InputError, JobKind, Workflow
from dicom_service.jobs.sqlite_queue import SQLiteJobQueue
from dicom_service.media.video import open_frames
from dicom_service.pipelines.record_spool import RecordSpool
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomcheck import run_dciodvfy
from tests.dicomnet import store
from tests.receiver import running_receiver
from tests.unit.test_service_flow import _wait_job

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def _seg_masks(ds) -> np.ndarray:
    """``(T, H, W)`` bool frames of a BINARY Segmentation with one segment."""
    return ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)).astype(bool)


def test_a_box_on_one_frame_amends_the_tooth_segmentation_and_reaches_the_pacs(make_settings, tmp_path) -> None:
    from dicom_service.vision.tooth_predictor import ToothSegmenter

    video = builders.make_video_photographic(frames=6, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    with running_receiver() as pacs:
        settings = make_settings(destinations=[{"name": "pacs", "ae_title": "PACS",
                                                "host": "127.0.0.1", "port": pacs.port}])
        with TestClient(create_app(Service(settings))) as client:
            service = client.app.state.service
            assert store(service.node.port, video) == 0
            _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded")
            sent = pacs.wait_for(3, 30)
            ai_seg = next(ds for ds in sent if str(ds.SOPClassUID) == SEG)

            box = [10.0, 8.0, 70.0, 60.0]
            request = {"sop_instance_uid": sop, "frame": 3, "box": box, "radius": 1}
            reply = client.post("/corrections/tooth-masks", json=request, headers=AUTH)
            assert reply.status_code == 201, reply.text
            out = reply.json()
            assert out["frames"] == 6 and out["corrected_frames"] == [2, 4]
            assert out["sop_instance_uid"] != str(ai_seg.SOPInstanceUID)
            # the same correction again: the same job and object, no second dispatch
            again = client.post("/corrections/tooth-masks", json=request, headers=AUTH).json()
            assert again == out
            assert [j["id"] for j in client.get("/jobs?kind=correct", headers=AUTH).json()] == [out["correction_job"]]

            # the amended SEG reaches the PACS through a dispatch job
            assert len(out["dispatch_jobs"]) == 1
            _wait_job(client, lambda j: j["id"] == out["dispatch_jobs"][0] and j["state"] == "succeeded")
            received = pacs.wait_for(4, 30)
            amended = next(ds for ds in received if str(ds.SOPInstanceUID) == out["sop_instance_uid"])

            # what the interactive model gives for that box on that frame, computed here
            shared = service.runtimes.video.segmenter
            frames = np.stack(list(open_frames(video).frames))
            own = ToothSegmenter(shared.model)
            own.set_image(frames[3])
            expected = own.predict(box=np.array(box)).mask

    stored = dcmread(out["path"])
    assert stored.SOPInstanceUID == amended.SOPInstanceUID
    assert run_dciodvfy(out["path"]) == []
    assert stored.SeriesNumber == 9104 and stored.SeriesDescription == "AI tooth segmentation, corrected"
    assert stored.SeriesInstanceUID != ai_seg.SeriesInstanceUID
    assert stored.StudyInstanceUID == video.StudyInstanceUID
    assert stored.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert stored.ContentDescription == "Corrected on frame 4 (box), +/-1 frames"
    ours, theirs = _seg_masks(stored), _seg_masks(ai_seg)
    assert np.array_equal(ours[3], expected)
    assert not np.array_equal(ours[3], theirs[3])  # the box changed the frame
    for t in (0, 1, 5):  # beyond the radius: the AI's automatic masks, unchanged
        assert np.array_equal(ours[t], theirs[t]), t
    assert out["tooth_fraction"] == pytest.approx(float(expected.mean()))


def test_corrections_on_several_frames_accumulate(make_settings) -> None:
    """A second correction ``based_on`` the first starts from its masks: the last
    Segmentation holds both fixes (and the AI's masks elsewhere) and says it is the second;
    an unknown or uncorrected Segmentation to build on is a 404, and a correction job whose
    Segmentation to build on is gone fails for good."""
    from dicom_service.jobs.correction import correction_payload, run_correction_job
    from dicom_service.pipelines.correction import MaskCorrection

    video = builders.make_video_photographic(frames=8, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    settings = make_settings()
    with TestClient(create_app(Service(settings))) as client:
        service = client.app.state.service
        assert store(service.node.port, video) == 0
        done = _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "succeeded")
        ai_path = next(p for kind, p in service.queue.result(done["id"])["results"] if kind == "seg")

        def post(frame: int, box: list[float], **extra) -> dict:
            reply = client.post("/corrections/tooth-masks", headers=AUTH, json={
                "sop_instance_uid": sop, "frame": frame, "box": box, "radius": 0, **extra})
            assert reply.status_code == 201, reply.text
            return reply.json()

        first = post(1, [10.0, 8.0, 70.0, 60.0])
        second = post(5, [40.0, 30.0, 120.0, 90.0], based_on=first["sop_instance_uid"])
        alone = post(5, [40.0, 30.0, 120.0, 90.0])  # the same fix on the AI's masks
        third = post(6, [0.0, 0.0, 60.0, 50.0], based_on=second["sop_instance_uid"])
        assert (first["corrections"], second["corrections"], third["corrections"]) == (1, 2, 3)
        assert second["based_on"] == first["sop_instance_uid"] and first["based_on"] is None
        assert len({first["sop_instance_uid"], second["sop_instance_uid"], alone["sop_instance_uid"]}) == 3
        listed = client.get(f"/corrections/tooth-masks?sop_instance_uid={sop}", headers=AUTH)
        assert listed.status_code == 200, listed.text
        assert listed.json() == [third, alone, second, first]  # newest first, as each POST replied
        assert client.get("/corrections/tooth-masks?sop_instance_uid=1.2.3.4", headers=AUTH).status_code == 404
        assert client.get("/corrections/tooth-masks", headers=AUTH).status_code == 422
        assert client.get(f"/corrections/tooth-masks?sop_instance_uid={sop}").status_code == 401

        for uid in ("1.2.3.4", str(dcmread(ai_path).SOPInstanceUID)):  # unknown; the AI's own is not a correction
            refused = client.post("/corrections/tooth-masks", headers=AUTH, json={
                "sop_instance_uid": sop, "frame": 2, "box": [0, 0, 50, 50], "based_on": uid})
            assert refused.status_code == 404 and "to build on" in refused.json()["detail"], uid

        process_job = service.queue.get(done["id"])
        gone = MaskCorrection(frame=0, box=np.array([0.0, 0.0, 50.0, 50.0]), based_on="1.2.3.4")
        job = service.queue.enqueue(JobKind.CORRECT, "correct/test/based-on-gone",
                                    study_uid=str(video.StudyInstanceUID), workflow=Workflow.VIDEO, max_attempts=3,
                                    payload=correction_payload(sop, process_job, gone))
        failed = service.queue.wait_for_job(job.id, 60)
        assert failed.state.value == "failed" and "to build on" in failed.error
        with pytest.raises(InputError, match="to build on"):
            run_correction_job(settings, service.store, service.queue, service.runtimes.video, failed, print)

    ai, one, two, solo, three = (_seg_masks(dcmread(p)) for p in (ai_path, first["path"], second["path"],
                                                                   alone["path"], third["path"]))
    assert np.array_equal(two[1], one[1]) and not np.array_equal(two[1], ai[1])  # the first fix kept
    assert np.array_equal(two[5], solo[5]) and not np.array_equal(two[5], ai[5])  # the second fix made
    for t in (0, 2, 3, 4, 6, 7):
        assert np.array_equal(two[t], ai[t]), t
    assert np.array_equal(three[1], one[1]) and np.array_equal(three[5], solo[5])
    assert not np.array_equal(three[6], ai[6])
    assert dcmread(second["path"]).ContentDescription == "Correction 2: frame 6 (box), +/-0 frames"
    assert dcmread(first["path"]).ContentDescription == "Corrected on frame 2 (box), +/-0 frames"
    assert run_dciodvfy(third["path"]) == []


def test_bad_corrections_get_clear_http_errors(make_settings) -> None:
    with TestClient(create_app(Service(make_settings()))) as client:
        unknown = {"sop_instance_uid": "1.2.3.4", "box": [0, 0, 10, 10]}
        assert client.post("/corrections/tooth-masks", json=unknown).status_code == 401
        reply = client.post("/corrections/tooth-masks", json=unknown, headers=AUTH)
        assert reply.status_code == 404 and "not stored" in reply.json()["detail"]
        for bad in ({"sop_instance_uid": "1.2.3"},  # no prompt
                    {"sop_instance_uid": "1.2.3", "points": [[1, 2]]},  # points without labels
                    {"sop_instance_uid": "1.2.3", "points": [[1, 2]], "labels": [1, 0]},
                    {"sop_instance_uid": "1.2.3", "points": [[1, 2]], "labels": [2]},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10]},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "frame": -1},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "radius": -2},
                    {"sop_instance_uid": "not a uid", "box": [0, 0, 10, 10]},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "colour": "red"},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "based_on": "not a uid"},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "restore": "maybe"},
                    # strict types: JSON true is not frame 1, "yes" not true, true not label 1
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "frame": True},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "restore": "yes"},
                    {"sop_instance_uid": "1.2.3", "box": [0, 0, 10, 10], "radius": "3"},
                    {"sop_instance_uid": "1.2.3", "points": [[1, 2]], "labels": [True]},
                    {"sop_instance_uid": "1.2.3", "points": [["1", 2]], "labels": [1]}):
            assert client.post("/corrections/tooth-masks", json=bad, headers=AUTH).status_code == 422, bad
        # NaN and Infinity, which Python's JSON parser takes: a 422 that echoes them as strings
        for body in ('{"sop_instance_uid": "1.2.3", "box": [NaN, 0, 10, 10]}',
                     '{"sop_instance_uid": "1.2.3", "points": [[Infinity, 2]], "labels": [1]}'):
            reply = client.post("/corrections/tooth-masks", content=body, headers={**AUTH, "Content-Type":
                                                                                  "application/json"})
            assert reply.status_code == 422, reply.text
            assert {"nan", "inf"} & {str(error.get("input")) for error in reply.json()["detail"]}
        assert client.get("/healthz").status_code == 200  # still serving


def test_theprocessing_job_of_an_instance(tmp_path) -> None:
    """The newest succeeded video job that processed the instance; a 409 naming the state
    of a job not yet succeeded, or saying that none processed it (a queue without workers)."""
    from dicom_service.jobs.sqlite_queue import SQLiteJobQueue

    queue = SQLiteJobQueue(tmp_path / "jobs.sqlite3")
    payload = {"sop_instance_uids": ["1.2.9.1"]}
    first = queue.enqueue(JobKind.PROCESS, "manual/1", study_uid="1.2.9", workflow=Workflow.VIDEO,
                          payload=payload, max_attempts=1)
    assert first is not None
    with pytest.raises(HTTPException) as pending:
        processing_job(queue, "1.2.9", "1.2.9.1")
    assert pending.value.status_code == 409 and f"job {first.id} is queued" in pending.value.detail
    with pytest.raises(HTTPException) as never:
        processing_job(queue, "1.2.9", "1.2.9.2")
    assert never.value.status_code == 409 and "not been processed" in never.value.detail
    claimed = queue.claim((JobKind.PROCESS,), "test")
    assert claimed is not None and claimed.id == first.id and queue.complete(first.id, result={})
    newer = queue.enqueue(JobKind.PROCESS, "manual/2", study_uid="1.2.9", workflow=Workflow.VIDEO,
                          payload=payload, max_attempts=1)
    assert newer is not None and newer.id != first.id
    assert processing_job(queue, "1.2.9", "1.2.9.1").id == first.id  # a newer queued job does not hide it
    radiograph = queue.enqueue(JobKind.PROCESS, "manual/3", study_uid="1.2.9", workflow=Workflow.RADIOGRAPH,
                               payload={"sop_instance_uids": ["1.2.9.3"]}, max_attempts=1)
    assert radiograph is not None
    with pytest.raises(HTTPException, match="409"):
        processing_job(queue, "1.2.9", "1.2.9.3")


def test_two_requests_putting_a_failed_job_back_both_get_it(tmp_path) -> None:
    """Concurrent posts of a correction whose job had failed: the second finds it queued
    already (and one cancelled while running, still stopping, stays as it is): no 500."""
    queue = SQLiteJobQueue(tmp_path / "jobs.sqlite3")
    job = queue.enqueue(JobKind.CORRECT, "c/1", study_uid="1.2.9", workflow=Workflow.VIDEO, payload={},
                        max_attempts=1)
    assert job is not None and queue.claim((JobKind.CORRECT,), "w") is not None
    queue.fail(job.id, "boom", permanent=True)
    stale = queue.get(job.id)
    assert stale is not None and stale.state.value == "failed"
    assert _requeued(queue, stale).state.value == "queued"
    assert _requeued(queue, stale).state.value == "queued"  # the other request's view was stale
    assert queue.claim((JobKind.CORRECT,), "w") is not None
    queue.cancel(job.id)  # cancelled while running: its attempt is still open
    assert _requeued(queue, queue.get(job.id)).state.value == "cancelled"


def test_correction_errors_from_the_frames(make_settings, monkeypatch) -> None:
    """A frame outside the clip and a box drawn backwards are 422s; clicks alone carry to
    the whole clip by default; frames too large for the memory allowed for a correction are
    a 413, and temporary files the disk cannot hold a 507."""
    video = builders.make_video_photographic(frames=12, rows=128, cols=176)
    sop = str(video.SOPInstanceUID)
    with TestClient(create_app(Service(make_settings()))) as client:
        service = client.app.state.service
        assert store(service.node.port, video) == 0
        _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "succeeded")
        outside = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "frame": 12,
                                                                "box": [0, 0, 10, 10]}, headers=AUTH)
        assert outside.status_code == 422 and "outside the source's 12 frames" in outside.json()["detail"]
        backwards = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop,
                                                                  "box": [20, 20, 10, 10]}, headers=AUTH)
        assert backwards.status_code == 422 and "x0 < x1" in backwards.json()["detail"]
        # prompts off the 176x128 frame (far off: once scaled, 1e39 overflowed to an empty mask)
        for prompts, named in (({"box": [100, 100, 200, 120]}, "box corner (200, 120)"),
                               ({"box": [-5, 0, 20, 20]}, "box corner (-5, 0)"),
                               ({"points": [[60, 40], [60, 129]], "labels": [1, 0]}, "click (60, 129)"),
                               ({"points": [[1e39, 1e39]], "labels": [1]}, "click (1e+39, 1e+39)")):
            off = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, **prompts}, headers=AUTH)
            assert off.status_code == 422 and named in off.json()["detail"], off.text
            assert "outside the 176x128 frame" in off.json()["detail"]
        edge = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "frame": 3, "radius": 0,
                                                             "box": [0, 0, 176, 128]}, headers=AUTH)
        assert edge.status_code == 201, edge.text  # the frame's edges are on it
        ok = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "frame": 5,
                                                           "points": [[60, 40]], "labels": [1]}, headers=AUTH)
        assert ok.status_code == 201, ok.text
        assert ok.json()["corrected_frames"] == [0, 11]  # the whole clip by default
        # a radius that reaches every frame is the whole clip: the same job, the same Segmentation
        wide = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "frame": 5, "radius": 11,
                                                             "points": [[60, 40]], "labels": [1]}, headers=AUTH)
        assert wide.status_code == 201 and wide.json() == ok.json()
        huge = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "frame": 5, "radius": 2**70,
                                                             "points": [[60, 40]], "labels": [1]}, headers=AUTH)
        assert huge.status_code == 201 and huge.json() == ok.json()
        assert dcmread(ok.json()["path"]).ContentDescription == "Corrected on frame 6 (1+/0- clicks), whole clip"
        with monkeypatch.context() as patch:
            patch.setattr(RecordSpool, "free_bytes", staticmethod(lambda directory=None: 2**20))
            full = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "frame": 5,
                                                                 "box": [0, 0, 50, 50]}, headers=AUTH)
        assert full.status_code == 507 and "MiB of disk" in full.json()["detail"]
    # the same storage, with 1 MiB for a correction (one takes more than 128 MiB)
    with TestClient(create_app(Service(make_settings(workers={"video_memory_mb": 1})))) as client:
        big = client.post("/corrections/tooth-masks", json={"sop_instance_uid": sop, "box": [0, 0, 50, 50]},
                          headers=AUTH)
        assert big.status_code == 413 and "allowed for a correction" in big.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_a_long_correction_answers_202_and_runs_as_a_job_that_survives_a_restart(make_settings) -> None:
    """``wait=0``: 202 with the job to follow, which then holds the amended SEG. A correction
    job accepted before a stop runs when the node starts again; one whose instance is gone
    fails for good."""
    from dicom_service.jobs.correction import correction_payload, run_correction_job
    from dicom_service.pipelines.correction import MaskCorrection

    video = builders.make_video_photographic(frames=8, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    settings = make_settings()
    request = {"sop_instance_uid": sop, "frame": 6, "box": [10, 8, 70, 60]}
    with TestClient(create_app(Service(settings))) as client:
        service = client.app.state.service
        assert store(service.node.port, video) == 0
        _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "succeeded")
        reply = client.post("/corrections/tooth-masks?wait=0", json=request, headers=AUTH)
        assert reply.status_code == 202, reply.text
        accepted = reply.json()
        assert accepted["state"] in ("queued", "running")
        assert reply.headers["Location"] == f"/jobs/{accepted['correction_job']}"
        done = _wait_job(client, lambda j: j["id"] == accepted["correction_job"] and j["state"] == "succeeded")
        result = client.get(f"/jobs/{done['id']}", headers=AUTH).json()["result"]
        amended = dcmread(result["correction"]["path"])
        assert amended.SeriesNumber == 9104 and result["correction"]["corrected_frames"] == [0, 7]
        assert run_dciodvfy(result["correction"]["path"]) == []
        finished = client.post("/corrections/tooth-masks?wait=0", json=request, headers=AUTH)
        assert finished.status_code == 201 and finished.json()["sop_instance_uid"] == str(amended.SOPInstanceUID)

        process_job = next(j for j in service.queue.list(kind=JobKind.PROCESS) if j.state.value == "succeeded")
        gone = service.queue.enqueue(JobKind.CORRECT, "correct/test/gone", study_uid=str(video.StudyInstanceUID),
                                     workflow=Workflow.VIDEO, max_attempts=3, payload={
                                         **correction_payload(sop, process_job, MaskCorrection(frame=0)),
                                         "sop_instance_uid": "1.2.3.4"})
        failed = service.queue.wait_for_job(gone.id, 60)
        assert failed.state.value == "failed" and "no longer stored" in failed.error
        with pytest.raises(InputError, match="no longer stored"):
            run_correction_job(settings, service.store, service.queue, service.runtimes.video, failed, print)

    # accepted, then the node stops before a worker takes it: it runs after the restart
    queue = SQLiteJobQueue(Path(settings.storage.path) / "jobs.sqlite3")
    pending = queue.enqueue(JobKind.CORRECT, "correct/test/restart", study_uid=str(video.StudyInstanceUID),
                            workflow=Workflow.VIDEO, max_attempts=3,
                            payload=correction_payload(sop, process_job, MaskCorrection(
                                frame=2, box=np.array([10.0, 8.0, 70.0, 60.0]), radius=1)))
    queue.close()
    with TestClient(create_app(Service(settings))) as client:
        after = client.app.state.service.queue.wait_for_job(pending.id, 60)
        assert after.state.value == "succeeded", after.error
        assert client.app.state.service.queue.result(pending.id)["correction"]["corrected_frames"] == [1, 3]
