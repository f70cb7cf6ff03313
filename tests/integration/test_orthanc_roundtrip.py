"""End to end with a real PACS: DCMTK → Orthanc → (Lua auto-routing) → node → Orthanc.

Orthanc runs with the deployment configuration of ``deploy/orthanc`` (ports, storage and
StableAge replaced, see :func:`tests.integration.orthanc.render_orthanc_config`); the node
runs as ``python -m dicom_service serve``. Every result is downloaded back from Orthanc,
validated with ``dciodvfy`` and read back with pydicom/highdicom.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_service.media.video import read_frames
from dicom_service.uids import new_uid
from tests import builders
from tests.dicomcheck import run_dciodvfy
from tests.integration.conftest import PacsAndNode
from tests.integration.node import NodeProcess
from tests.integration.orthanc import (
    NODE_AET,
    ORTHANC_AET,
    RESULT_MANUFACTURER,
    OrthancServer,
    result_instances,
)
from tests.integration.tools import echoscu, free_port, storescu, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk_tools")]

IMPLANT = ("40388003", "SCT")
ABSENT = ("2667000", "SCT")
ROUND_TRIP_TIMEOUT = 120.0


# --------------------------------------------------------------------------- helpers
def wait_for_results(orthanc: OrthancServer, node: NodeProcess, study_uid: str,
                     expected: dict[str, int], timeout: float = ROUND_TRIP_TIMEOUT) -> dict[str, list[str]]:
    """Poll Orthanc until the study holds at least ``expected`` results of each kind."""

    def probe() -> dict[str, list[str]] | None:
        found = result_instances(orthanc, study_uid)
        if all(len(found.get(kind, [])) >= n for kind, n in expected.items()):
            return found
        return None

    def alive() -> None:
        orthanc.check_alive()
        node.check_alive()

    return wait_until(probe, timeout, interval=0.5, alive=alive,
                      what=f"results {expected} of study {study_uid} in Orthanc")


def download(orthanc: OrthancServer, instance_id: str, folder: Path) -> tuple[Path, Dataset]:
    """Fetch an instance from Orthanc into ``folder``; check it with dciodvfy; read it."""
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(orthanc.instance_file(instance_id))
    errors = run_dciodvfy(path)
    ds = pydicom.dcmread(path)
    assert errors == [], f"dciodvfy errors in {ds.SOPClassUID.name} {ds.SOPInstanceUID}: {errors}"
    assert orthanc.instance_metadata(instance_id).get("RemoteAET") == NODE_AET
    assert ds.Manufacturer == RESULT_MANUFACTURER
    return path, ds


def wait_for_lua_idle(orthanc: OrthancServer, study_uid: str, timeout: float = 30.0) -> None:
    """Wait until the routing script reported "nothing to send" for the study.

    That line is printed by ``route-to-dental-ai.lua`` when the study became stable
    again (after the results arrived) and every instance was a node result or already
    delivered: the proof that results are not routed back to the node.
    """
    orthanc_id = orthanc.study_id(study_uid)
    pattern = re.compile(rf"study {re.escape(str(orthanc_id))}: nothing to send")
    wait_until(lambda: pattern.search(orthanc.log_path.read_text(errors="replace")), timeout,
               interval=0.2, what="the routing script's 'nothing to send'", alive=orthanc.check_alive)


def store_jobs_to_node(orthanc: OrthancServer) -> list[dict]:
    """Orthanc's C-STORE jobs toward the node."""
    return [job for job in orthanc.jobs()
            if job["Type"] == "DicomModalityStore" and job["Content"].get("RemoteAet") == NODE_AET]


def referenced_sop(sr: hd.sr.Comprehensive3DSR) -> str:
    """The SOP Instance UID of the image an implant report is about (its first evidence)."""
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    return str(evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def code_of(item: object) -> tuple[str, str]:
    """(value, scheme) of a highdicom CodedConcept."""
    return (str(item.value), str(item.scheme_designator))  # type: ignore[attr-defined]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check_implant_report(path: Path, truth: dict[str, list[tuple[float, ...]]]) -> None:
    """The SR has one implant group per phantom implant (boxes near the truth), or
    states "Implant: Absent" for an image without implants."""
    sr = hd.sr.srread(path)
    source = referenced_sop(sr)
    assert source in truth, f"SR {sr.SOPInstanceUID} references an unknown image {source}"
    boxes = truth[source]
    groups = [g for g in sr.content.get_planar_roi_measurement_groups()
              if g.finding_type is not None and code_of(g.finding_type) == IMPLANT]
    assert len(groups) == len(boxes), f"{len(groups)} implant findings for {len(boxes)} implants"
    for group in groups:
        points = np.asarray(group.roi.value, dtype=float)
        found = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
        assert max(box_iou(found, true) for true in boxes) > 0.3, f"box {found} far from {boxes}"
    if not boxes:
        evaluations = [e for g in sr.content.get_image_measurement_groups()
                       for e in g.get_qualitative_evaluations()]
        assert any(code_of(e.name) == IMPLANT and code_of(e.value) == ABSENT for e in evaluations)


# --------------------------------------------------------------------------- tests
def test_echoscu_against_node_and_orthanc_echo_of_the_node(pacs_and_node: PacsAndNode) -> None:
    """DCMTK echoscu gets a C-ECHO answer; Orthanc's configured modality reaches the node."""
    node, orthanc = pacs_and_node.node, pacs_and_node.orthanc
    proc = echoscu(node.dicom_port, called_aet=NODE_AET)
    assert proc.returncode == 0, proc.stderr
    response = orthanc.client.post("/modalities/dental-ai/echo", json={})
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_radiograph_study_round_trip(pacs_and_node: PacsAndNode, tmp_path: Path) -> None:
    """Two intra-oral images (2 implants, none) → SR ×2, SEG ×1, PR ×2, SC ×2 in Orthanc."""
    orthanc, node = pacs_and_node.orthanc, pacs_and_node.node
    study = new_uid()
    # training-style phantoms: the node runs its default runtime, the bundled implant model
    with_implants, boxes = builders.make_periapical_phantom_with_truth(
        implants=2, seed=10_001, study_uid=study, series_uid=new_uid())
    without, _ = builders.make_periapical_phantom_with_truth(implants=0, seed=10_020, study_uid=study,
                                                             series_uid=new_uid())
    files = [builders.save(with_implants, tmp_path / "in" / "implants.dcm"),
             builders.save(without, tmp_path / "in" / "none.dcm")]
    truth = {str(with_implants.SOPInstanceUID): [tuple(map(float, b)) for b in boxes],
             str(without.SOPInstanceUID): []}

    storescu(files, orthanc.dicom_port, called_aet=ORTHANC_AET)
    found = wait_for_results(orthanc, node, study, {"sr": 2, "seg": 1, "pr": 2, "sc": 2})

    assert {k: len(v) for k, v in found.items()} == {"sr": 2, "seg": 1, "pr": 2, "sc": 2}
    out = tmp_path / "from-orthanc"
    out.mkdir()
    sources = {str(with_implants.SOPInstanceUID), str(without.SOPInstanceUID)}
    for instance in found["sr"]:
        path, ds = download(orthanc, instance, out)
        assert ds.StudyInstanceUID == study
        check_implant_report(path, truth)
    for instance in found["seg"]:
        path, ds = download(orthanc, instance, out)
        seg = hd.seg.segread(path)
        assert seg.number_of_segments >= 1
        assert str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
                   .ReferencedSOPInstanceUID) == str(with_implants.SOPInstanceUID)
    for instance in found["pr"]:
        _, ds = download(orthanc, instance, out)
        referenced = {str(item.ReferencedSOPInstanceUID)
                      for series in ds.ReferencedSeriesSequence for item in series.ReferencedImageSequence}
        assert referenced <= sources and referenced
        if str(with_implants.SOPInstanceUID) in referenced:
            graphics = [g for a in ds.GraphicAnnotationSequence for g in a.get("GraphicObjectSequence", [])]
            assert len(graphics) >= len(boxes)
    for instance in found["sc"]:
        _, ds = download(orthanc, instance, out)
        assert ds.BurnedInAnnotation == "YES"
        assert ds.pixel_array.shape == (with_implants.Rows, with_implants.Columns, 3)

    # No loop: the results made the study stable again, and the routing script sent nothing.
    wait_for_lua_idle(orthanc, study)
    assert len(store_jobs_to_node(orthanc)) == 1
    assert len(node.jobs(kind="process")) == 2  # one per radiograph
    dispatches = node.jobs(kind="dispatch")
    assert [j["state"] for j in dispatches] == ["succeeded"] * 2


@pytest.mark.slow
def test_video_round_trip(pacs_and_node: PacsAndNode, tmp_path: Path) -> None:
    """A 2 s 320x240 H.264 Video Photographic clip → enhanced video, tooth SEG and SR; then
    a correction over HTTP with ``restore`` → an amended SEG, and the clip restored again
    with it (amended video and report), in Orthanc."""
    orthanc, node = pacs_and_node.orthanc, pacs_and_node.node
    fps, frames = 30.0, 60
    video = builders.make_video_photographic(frames=frames, rows=240, cols=320, fps=fps, seed=5)
    study = str(video.StudyInstanceUID)
    path_in = builders.save(video, tmp_path / "in" / "video.dcm")

    storescu([path_in], orthanc.dicom_port, called_aet=ORTHANC_AET)
    found = wait_for_results(orthanc, node, study, {"video": 1, "seg": 1, "sr": 1})

    assert {k: len(v) for k, v in found.items()} == {"video": 1, "seg": 1, "sr": 1}
    out = tmp_path / "from-orthanc"
    out.mkdir()
    _, enhanced = download(orthanc, found["video"][0], out)
    assert enhanced.file_meta.TransferSyntaxUID.startswith("1.2.840.10008.1.2.4.10")
    decoded, decoded_fps = read_frames(enhanced)
    assert decoded.shape[1:] == (240, 320, 3)
    assert abs(decoded.shape[0] - frames) <= 1
    assert decoded_fps == pytest.approx(fps, rel=0.02)
    seg_path, _ = download(orthanc, found["seg"][0], out)
    seg = hd.seg.segread(seg_path)
    assert seg.number_of_segments >= 1
    assert int(seg.NumberOfFrames) >= 1
    sr_path, sr_ds = download(orthanc, found["sr"][0], out)
    sr = hd.sr.srread(sr_path)
    assert referenced_sop(sr) == str(video.SOPInstanceUID)
    referenced_all = {str(item.ReferencedSOPInstanceUID)
                      for e in sr_ds.CurrentRequestedProcedureEvidenceSequence
                      for s in e.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
    assert {str(enhanced.SOPInstanceUID), str(video.SOPInstanceUID)} <= referenced_all
    wait_for_lua_idle(orthanc, study)
    assert len(store_jobs_to_node(orthanc)) == 1

    # a dentist corrects frame 30 with a box over the node's HTTP API: the amended SEG
    # reaches Orthanc beside the AI's, then the clip restored again with it; none of it is
    # routed back to the node
    reply = node.client.post("/corrections/tooth-masks", json={
        "sop_instance_uid": str(video.SOPInstanceUID), "frame": 30, "box": [20, 20, 200, 160], "radius": 10,
        "restore": True})
    assert reply.status_code == 201, reply.text
    assert reply.json()["corrected_frames"] == [20, 40] and reply.json()["restore_job"] is not None
    found = wait_for_results(orthanc, node, study, {"seg": 2, "video": 2, "sr": 2})
    videos = [download(orthanc, i, out) for i in found["video"]]
    restored = next(ds for _, ds in videos if ds.SeriesNumber == 9105)
    assert restored.SeriesDescription == "AI enhanced video, corrected tooth masks"
    assert reply.json()["sop_instance_uid"] in restored.DerivationDescription
    assert read_frames(restored)[0].shape == decoded.shape
    corrected = [download(orthanc, i, out) for i in found["seg"]]
    amended = [ds for _, ds in corrected if ds.SeriesNumber == 9104]
    assert len(amended) == 1 and str(amended[0].SOPInstanceUID) == reply.json()["sop_instance_uid"]
    assert amended[0].SeriesDescription == "AI tooth segmentation, corrected"
    assert amended[0].SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert hd.seg.segread(next(p for p, ds in corrected if ds.SeriesNumber == 9104)).number_of_segments == 1
    wait_for_lua_idle(orthanc, study)
    assert len(store_jobs_to_node(orthanc)) == 1


@pytest.mark.slow
def test_destination_down_then_up(
    node_factory: Callable[..., NodeProcess], orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    """Results wait (dispatch retried with back-off) while the PACS is down, then arrive."""
    pacs_port = free_port()
    node = node_factory(destination_port=pacs_port, stability_seconds=0.5).start()
    ds = builders.make_intraoral_radiograph(implants=1, seed=7)
    storescu([builders.save(ds, tmp_path / "io.dcm")], node.dicom_port, called_aet=NODE_AET)

    def retrying() -> dict | None:
        for job in node.jobs(kind="dispatch"):
            if job["state"] == "queued" and (job["attempts"] > 1 or job["error"]):
                return job
        return None

    job = wait_until(retrying, 60, interval=0.2, what="a dispatch job retrying", alive=node.check_alive)
    assert "DispatchError" in (job["error"] or "")

    orthanc = orthanc_factory(node_port=node.dicom_port, dicom_port=pacs_port)
    found = wait_for_results(orthanc, node, str(ds.StudyInstanceUID),
                             {"sr": 1, "seg": 1, "pr": 1, "sc": 1})
    assert {k: len(v) for k, v in found.items()} == {"sr": 1, "seg": 1, "pr": 1, "sc": 1}
    done = wait_until(lambda: (j := node.job(job["id"]))["state"] == "succeeded" and j, 30,
                      interval=0.2, what="the dispatch job to succeed")
    assert done["attempts"] >= 2
    # The study in Orthanc holds only results: the routing script must send nothing back.
    wait_for_lua_idle(orthanc, str(ds.StudyInstanceUID))
    assert store_jobs_to_node(orthanc) == []
