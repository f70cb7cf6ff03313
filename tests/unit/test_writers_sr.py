"""TID 1500 reports: implants on a radiograph (found and not found) and video summaries."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code

from dicom_service.domain import (
    AlgorithmInfo,
    ImplantFinding,
    ImplantPart,
    RadiographResult,
    VideoEnhancement,
)
from dicom_service.writers.seg import (
    write_implant_segmentation,
    write_tooth_segmentation,
)
from dicom_service.writers.sr import write_implant_report, write_video_report
from dicom_service.writers.video import write_enhanced_video
from tests import builders
from tests.dicomcheck import run_dciodvfy

ALGORITHM = AlgorithmInfo(name="implant-detector", version="0.3.1", family="ai", parameters="score>=0.5")
IMPLANT = Code("40388003", "SCT", "Implant")
COMPREHENSIVE_3D = "1.2.840.10008.5.1.4.1.1.88.34"


def _texts(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT":
            out.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item.TextValue)
    return out


@pytest.fixture(scope="module")
def radiograph() -> pydicom.Dataset:
    return builders.make_intraoral_radiograph(rows=200, cols=160, implants=2)


def _result() -> RadiographResult:
    return RadiographResult(
        findings=[
            ImplantFinding(
                box=(21.0, 68.0, 71.0, 155.0), score=0.93,
                parts=(ImplantPart("coronal", (21.0, 68.0, 71.0, 90.0), 0.8),),
                attributes={"body": "tapered", "thread": "V-shaped"},
                system_top=(("Straumann BLT", 0.71), ("Nobel Active", 0.2)),
            ),
            ImplantFinding(box=(99.0, 66.0, 123.0, 165.0), score=0.64),
        ],
        image_shape=(200, 160),
        algorithm=ALGORITHM,
    )


def test_implant_report_has_one_group_per_implant(radiograph: pydicom.Dataset, tmp_path: Path) -> None:
    result = _result()
    seg = write_implant_segmentation(radiograph, result, uid_seed="job")
    ds = write_implant_report(radiograph, result, segmentation=seg, uid_seed="job")
    path = builders.save(ds, tmp_path / "report.dcm")
    assert run_dciodvfy(path) == []

    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == COMPREHENSIVE_3D
    assert sr.StudyInstanceUID == radiograph.StudyInstanceUID
    assert sr.PatientID == radiograph.PatientID
    assert sr.ContentSequence is not None
    groups = sr.content.get_planar_roi_measurement_groups(finding_type=IMPLANT)
    assert len(groups) == 2
    for group, finding in zip(groups, result.findings, strict=True):
        x0, y0, x1, y1 = finding.box
        expected = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(group.roi.value, expected)
        certainty = group.get_measurements(name=Code("111012", "DCM", "Certainty of Finding"))
        assert certainty[0].value == pytest.approx(finding.score)
        assert group.finding_category.value == "260787004"
        assert group.tracking_identifier.startswith("Implant ")
        assert pydicom.uid.UID(group.tracking_uid).is_valid
    texts = _texts(groups[0])
    assert texts["Device Model Name"] == ["Straumann BLT"]
    assert texts["Implant system candidate"] == ["1. Straumann BLT (p=0.710)", "2. Nobel Active (p=0.200)"]
    assert texts["Implant design attribute"] == ["body: tapered", "thread: V-shaped"]
    parts = sr.content.get_planar_roi_measurement_groups(
        finding_type=Code("IMPLANTPART", "99DENTALAI", "Dental implant part"))
    assert len(parts) == 1 and _texts(parts[0])["Implant part label"] == ["coronal"]

    evidence = {ref.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}
    assert {radiograph.SOPInstanceUID, seg.SOPInstanceUID} <= evidence
    schemes = {i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence}
    assert {"99DENTALAI", "99IHE"} <= schemes


def test_no_findings_report_states_absence(radiograph: pydicom.Dataset, tmp_path: Path) -> None:
    empty = RadiographResult(findings=[], image_shape=(200, 160), algorithm=ALGORITHM)
    ds = write_implant_report(radiograph, empty, comprehensive_3d=False)
    path = builders.save(ds, tmp_path / "none.dcm")
    assert run_dciodvfy(path) == []

    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.content.get_planar_roi_measurement_groups() == []
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    evaluations = groups[0].get_qualitative_evaluations(name=IMPLANT)
    assert len(evaluations) == 1
    assert evaluations[0].value == Code("2667000", "SCT", "Absent")
    assert groups[0].tracking_identifier == "No implant found"


def test_report_rejects_mismatched_shape_and_boxes_outside(radiograph: pydicom.Dataset) -> None:
    wrong = RadiographResult(findings=[], image_shape=(100, 100), algorithm=ALGORITHM)
    with pytest.raises(ValueError, match="does not match the source"):
        write_implant_report(radiograph, wrong)
    outside = RadiographResult(findings=[ImplantFinding((150.0, 0.0, 170.0, 10.0), 0.5)],
                               image_shape=(200, 160), algorithm=ALGORITHM)
    with pytest.raises(ValueError, match="outside the 160x200 image"):
        write_implant_report(radiograph, outside)


def test_implant_report_uids_are_deterministic(radiograph: pydicom.Dataset) -> None:
    a = write_implant_report(radiograph, _result(), uid_seed="retry")
    b = write_implant_report(radiograph, _result(), uid_seed="retry")
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)


def _enhancement(frames: np.ndarray, masks: np.ndarray) -> VideoEnhancement:
    return VideoEnhancement(
        frames=frames, tooth_masks=masks, fps=30.0,
        algorithm=AlgorithmInfo(name="video-restorer", version="1.0", family="baseline"),
        steps=["denoise (temporal median, 5 frames)", "deblur (unsharp mask)", "stabilise"],
        metrics={"mean_tooth_area_fraction": 0.31, "residual_shake_px": 1.25,
                 "frames_processed": 4.0},
    )


def test_video_report_summarises_steps_metrics_and_results(tmp_path: Path) -> None:
    video = builders.make_video_photographic(frames=4, rows=48, cols=64)
    frames, masks = builders.make_intraoral_scene(frames=4, rows=48, cols=64)
    enhancement = _enhancement(frames, masks)
    enhanced = write_enhanced_video(video, frames, 30.0, uid_seed="v")
    tooth_seg = write_tooth_segmentation(video, masks, algorithm=enhancement.algorithm, uid_seed="v")
    ds = write_video_report(video, enhancement, derived=[enhanced, tooth_seg], uid_seed="v")
    path = builders.save(ds, tmp_path / "video-report.dcm")
    assert run_dciodvfy(path) == []

    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    values = {m.name.meaning: (m.value, m.unit.value) for m in groups[0].get_measurements()}
    assert values == {
        "mean tooth area fraction": (pytest.approx(0.31), "1"),
        "residual shake px": (pytest.approx(1.25), "{pixels}"),
        "frames processed": (pytest.approx(4.0), "1"),
    }
    assert _texts(groups[0])["Processing step"] == enhancement.steps
    referenced = {ref.ReferencedSOPInstanceUID
                  for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
                  for study in sr.get(seq, [])
                  for series in study.ReferencedSeriesSequence
                  for ref in series.ReferencedSOPSequence}
    assert {video.SOPInstanceUID, enhanced.SOPInstanceUID, tooth_seg.SOPInstanceUID} <= referenced


def test_video_report_rejects_objects_of_another_study() -> None:
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    other = builders.make_video_photographic(frames=2, rows=32, cols=32)
    frames, masks = builders.make_intraoral_scene(frames=2, rows=32, cols=32)
    with pytest.raises(ValueError, match="belongs to another study"):
        write_video_report(video, _enhancement(frames, masks), derived=[other])


def test_video_report_rejects_non_finite_metric() -> None:
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    frames, masks = builders.make_intraoral_scene(frames=2, rows=32, cols=32)
    enhancement = _enhancement(frames, masks)
    enhancement.metrics["psnr_db"] = float("nan")
    with pytest.raises(ValueError, match="'psnr_db' is not a finite number"):
        write_video_report(video, enhancement, derived=[])
