"""Doctor-in-the-loop restoration: a corrected tooth Segmentation guides the restoration
of the clip again (seed 000), in the runtime, the workflow and over HTTP to the PACS."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from fastapi.testclient import TestClient  # noqa: E402

from dicom_service.api.app import create_app  # noqa: E402
from dicom_service.domain import InputError, JobKind, Workflow  # noqa: E402
from dicom_service.jobs.restore import run_restore_job  # noqa: E402
from dicom_service.media.video import read_frames  # noqa: E402
from dicom_service.pipelines.video import process_video_instance, restore_video_instance  # noqa: E402
from dicom_service.service import Service  # noqa: E402
from dicom_service.training.video_phantoms import clip_seed, render_clip  # noqa: E402
from dicom_service.vision.registry import default_models_dir  # noqa: E402
from dicom_service.vision.runtime import CollectingSink, MaskGuidedRuntime  # noqa: E402
from dicom_service.vision.video_runtime import LearnedVideoRuntime  # noqa: E402
from dicom_service.writers.seg import write_tooth_segmentation  # noqa: E402
from tests import builders  # noqa: E402
from tests.dicomcheck import run_dciodvfy  # noqa: E402
from tests.dicomnet import store  # noqa: E402
from tests.receiver import running_receiver  # noqa: E402
from tests.unit.test_corrections_api import AUTH  # noqa: E402
from tests.unit.test_service_flow import _wait_job  # noqa: E402

SC = "1.2.840.10008.5.1.4.1.1.7"
VIDEO = "1.2.840.10008.5.1.4.1.1.77.1.4.1"


@pytest.fixture(scope="module")
def runtime() -> LearnedVideoRuntime:
    return LearnedVideoRuntime(default_models_dir(), "cpu", precision="float32", stabilise=False)


def _clip() -> np.ndarray:
    return render_clip(clip_seed(0, "test", 5), frames=5, height=96, width=128, teeth=True).degraded


def test_given_masks_guide_the_restoration(runtime: LearnedVideoRuntime) -> None:
    """Given the runtime's own masks, the stream gives exactly what it gives alone; given
    other masks, the prior model restores the frames differently and returns those masks.
    The model without the prior says it ignores them, and does."""
    frames = _clip()
    alone = runtime.enhance(frames, 30.0)
    assert alone.tooth_masks.any()
    same = runtime.enhance(frames, 30.0, masks=alone.tooth_masks)
    assert np.array_equal(same.frames, alone.frames) and np.array_equal(same.tooth_masks, alone.tooth_masks)
    assert same.steps[0].startswith("Tooth masks: given") and same.steps[1:] == alone.steps[1:]
    assert isinstance(runtime, MaskGuidedRuntime) and runtime.uses_tooth_masks

    moved = np.roll(alone.tooth_masks, 24, axis=2)  # a dentist's masks: teeth where the AI saw none
    guided = runtime.enhance(frames, 30.0, masks=moved)
    assert np.array_equal(guided.tooth_masks, moved)
    changed = np.abs(guided.frames.astype(int) - alone.frames.astype(int)).max(axis=-1) > 0
    assert changed.mean() > 0.05  # the restoration follows the masks...
    assert guided.frames.shape == alone.frames.shape  # ...frame for frame

    noprior = LearnedVideoRuntime(default_models_dir(), "cpu", precision="float32", stabilise=False, prior=False)
    assert not noprior.uses_tooth_masks
    assert np.array_equal(noprior.enhance(frames, 30.0, masks=moved).frames, noprior.enhance(frames, 30.0).frames)


def test_bad_given_masks_are_errors(runtime: LearnedVideoRuntime) -> None:
    frames = _clip()
    with pytest.raises(ValueError, match="do not match the frames"):
        runtime.enhance(frames, 30.0, masks=np.zeros((5, 96, 120), bool))
    with pytest.raises(ValueError, match="end at frame 3"):
        runtime.enhance_stream(iter(frames), 5, 30.0, CollectingSink(), masks=iter(np.zeros((3, 96, 128), bool)))
    with pytest.raises(ValueError, match="given tooth mask 0 is"):
        runtime.enhance_stream(iter(frames), 5, 30.0, CollectingSink(), masks=iter(np.zeros((5, 96, 64), bool)))


def test_a_photo_restored_again_with_corrected_masks(runtime: LearnedVideoRuntime, tmp_path: Path) -> None:
    """A still photograph: processed, its enhanced Secondary Capture, Segmentation and
    report are series 9101, 9102 and 9103; restored again, an amended Secondary Capture in
    series 9105 and a report in 9106 that lists it with the corrected Segmentation; both
    valid DICOM."""
    photo = builders.make_vl_photographic_jpeg(rows=96, cols=128, seed=3)
    first, _ = process_video_instance(photo, runtime, uid_seed="job/1")
    assert [(o.kind, o.dataset.SeriesNumber) for o in first] == [("sc", 9101), ("seg", 9102), ("sr", 9103)]
    masks = np.zeros((1, 96, 128), bool)
    masks[0, 30:70, 20:110] = True
    seg = write_tooth_segmentation(photo, masks, algorithm=runtime.info, uid_seed="corrected")
    objects, summary = restore_video_instance(photo, runtime, masks, seg, uid_seed="job/1")
    assert [o.kind for o in objects] == ["sc", "sr"]
    enhanced, report = objects[0].dataset, objects[1].dataset
    assert str(enhanced.SOPClassUID) == SC and enhanced.SeriesNumber == 9105
    assert enhanced.SeriesDescription == "AI enhanced photo, corrected tooth masks"
    assert report.SeriesNumber == 9106 and enhanced.StudyInstanceUID == photo.StudyInstanceUID
    assert summary["segmentation"] == str(seg.SOPInstanceUID) and summary["frames"] == 1
    assert summary["steps"][0].startswith("Tooth masks: given") and str(seg.SOPInstanceUID) in summary["steps"][1]
    # the masks reached the restoration: the photo is what the runtime makes with them, not the first one
    frame = read_frames(photo)[0]
    assert np.array_equal(enhanced.pixel_array, runtime.enhance(frame, 1.0, masks=masks).frames[0])
    assert not np.array_equal(enhanced.pixel_array, first[0].dataset.pixel_array)
    evidence = {str(item.ReferencedSOPInstanceUID) for study in report.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {str(seg.SOPInstanceUID), str(enhanced.SOPInstanceUID)} <= evidence
    for obj in objects:
        path = tmp_path / f"{obj.kind}.dcm"
        path.write_bytes(obj.to_bytes())
        assert run_dciodvfy(path) == [], obj.kind
    # the same correction again: the same UIDs
    again, _ = restore_video_instance(photo, runtime, masks, seg, uid_seed="job/1")
    assert [o.sop_instance_uid for o in again] == [o.sop_instance_uid for o in objects]

    with pytest.raises(InputError, match="do not match the source's frames"):
        restore_video_instance(photo, runtime, np.zeros((1, 96, 64), bool), seg, uid_seed="job/1")
    noprior = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False, prior=False)
    with pytest.raises(InputError, match="does not restore with the tooth masks"):
        restore_video_instance(photo, noprior, masks, seg, uid_seed="job/1")


def test_a_correction_with_restore_sends_an_amended_video_to_the_pacs(make_settings, tmp_path: Path) -> None:
    """``restore: true``: the correction job queues a ``restore`` job; the processing
    workers make the amended video and report, which reach the PACS, decode, name the
    corrected Segmentation and pass dciodvfy. A restore job whose Segmentation is gone
    fails for good; a runtime without the prior refuses ``restore`` with a 409."""
    video = builders.make_video_photographic(frames=6, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    with running_receiver() as pacs:
        settings = make_settings(destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                "port": pacs.port}])
        with TestClient(create_app(Service(settings))) as client:
            service = client.app.state.service
            assert store(service.node.port, video) == 0
            _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded")
            pacs.wait_for(3, 30)
            request = {"sop_instance_uid": sop, "frame": 2, "box": [10.0, 8.0, 70.0, 60.0], "restore": True}
            reply = client.post("/corrections/tooth-masks", json=request, headers=AUTH)
            assert reply.status_code == 201, reply.text
            out = reply.json()
            assert out["restore_job"] is not None
            done = _wait_job(client, lambda j: j["id"] == out["restore_job"] and j["state"] in ("succeeded", "dead",
                                                                                                 "failed"), 120)
            assert done["kind"] == "restore" and done["state"] == "succeeded", done
            result = service.queue.result(done["id"])
            assert [kind for kind, _ in result["results"]] == ["video", "sr"]
            assert len(result["dispatch_jobs"]) == 1
            _wait_job(client, lambda j: j["id"] == result["dispatch_jobs"][0] and j["state"] == "succeeded")
            received = pacs.wait_for(6, 30)  # the AI's 3, the corrected SEG, the amended video and report
            # the same correction again: the same jobs, nothing queued twice
            assert client.post("/corrections/tooth-masks", json=request, headers=AUTH).json() == out
            assert len(client.get("/jobs?kind=restore", headers=AUTH).json()) == 1
            # without restore: another correction job making the same Segmentation, listed once
            plain = client.post("/corrections/tooth-masks", json={**request, "restore": False}, headers=AUTH).json()
            assert plain["sop_instance_uid"] == out["sop_instance_uid"] and plain["restore_job"] is None
            assert plain["dispatch_jobs"] == out["dispatch_jobs"]  # the dispatch job that carries that SEG
            listed = client.get(f"/corrections/tooth-masks?sop_instance_uid={sop}", headers=AUTH).json()
            assert [c["sop_instance_uid"] for c in listed] == [out["sop_instance_uid"]]
            assert listed[0]["restore_job"] == out["restore_job"]  # the two replies merged
            assert listed[0]["correction_job"] == out["correction_job"] and listed[0]["dispatch_jobs"] == \
                out["dispatch_jobs"]
            assert service.pools[0].kinds == (JobKind.RESTORE, JobKind.PROCESS)  # a dentist's restore first

            process_job = next(j for j in service.queue.list(kind=JobKind.PROCESS))
            gone = service.queue.enqueue(JobKind.RESTORE, "restore/test/gone", study_uid=str(video.StudyInstanceUID),
                                         workflow=Workflow.VIDEO, max_attempts=3,
                                         payload={"sop_instance_uid": sop, "process_job": process_job.id,
                                                  "segmentation": "/nonexistent/seg.dcm"})
            failed = service.queue.wait_for_job(gone.id, 60)
            assert failed.state.value == "failed" and "does not read" in failed.error
            garbage = tmp_path / "garbage.dcm"
            garbage.write_bytes(b"not a DICOM file" * 64)
            bad = service.queue.enqueue(JobKind.RESTORE, "restore/test/garbage", study_uid=str(video.StudyInstanceUID),
                                        workflow=Workflow.VIDEO, max_attempts=3,
                                        payload={"sop_instance_uid": sop, "process_job": process_job.id,
                                                 "segmentation": str(garbage)})
            unreadable = service.queue.wait_for_job(bad.id, 60)
            assert unreadable.state.value == "failed" and "InvalidDicomError" in unreadable.error
            with pytest.raises(InputError, match="does not read"):
                run_restore_job(settings, service.store, service.queue, service.runtimes.video, failed, print)
            assert client.get("/healthz").status_code == 200

    amended = next(ds for ds in received if str(ds.SOPClassUID) == VIDEO and ds.SeriesNumber == 9105)
    report = next(ds for ds in received if ds.SeriesNumber == 9106)
    assert amended.SeriesDescription == "AI enhanced video, corrected tooth masks"
    assert out["sop_instance_uid"] in amended.DerivationDescription
    assert read_frames(amended)[0].shape == (6, 96, 128, 3)
    assert report.SeriesDescription == "AI video enhancement report, corrected tooth masks"
    for kind, path in result["results"]:
        assert run_dciodvfy(path) == [], kind
    assert dcmread(io.BytesIO(Path(result["results"][0][1]).read_bytes())).SOPInstanceUID == amended.SOPInstanceUID

    with TestClient(create_app(Service(make_settings(models={"video": "learned-noprior"})))) as client:
        assert store(client.app.state.service.node.port, video) == 0
        _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "succeeded")
        refused = client.post("/corrections/tooth-masks", json=request, headers=AUTH)
        assert refused.status_code == 409 and "restores without the tooth masks" in refused.json()["detail"]


def test_a_failed_restore_runs_again_when_the_correction_is_posted_again(make_settings) -> None:
    """A node restarted with a video memory budget that holds a correction (130 MiB) but not
    the clip's enhancement (269 MiB): the restore job fails for good, naming the memory.
    Restarted with room, the same request puts that restore job back in the queue, and it
    succeeds."""
    video = builders.make_video_photographic(frames=6, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    request = {"sop_instance_uid": sop, "frame": 2, "box": [10.0, 8.0, 70.0, 60.0], "restore": True}
    with TestClient(create_app(Service(make_settings()))) as client:
        assert store(client.app.state.service.node.port, video) == 0
        _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "succeeded")
    with TestClient(create_app(Service(make_settings(workers={"video_memory_mb": 200})))) as client:
        out = client.post("/corrections/tooth-masks", json=request, headers=AUTH).json()
        failed = client.app.state.service.queue.wait_for_job(out["restore_job"], 60)
        assert failed.state.value == "failed" and "too large for this node's memory" in failed.error
    with TestClient(create_app(Service(make_settings()))) as client:
        again = client.post("/corrections/tooth-masks", json=request, headers=AUTH)
        assert again.status_code == 201 and again.json()["restore_job"] == out["restore_job"]
        done = client.app.state.service.queue.wait_for_job(out["restore_job"], 120)
        assert done.state.value == "succeeded", done.error
        assert [kind for kind, _ in client.app.state.service.queue.result(done.id)["results"]] == ["video", "sr"]
