"""Grayscale Softcopy Presentation State with implant boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_service.domain import AlgorithmInfo, ImplantFinding, RadiographResult
from dicom_service.writers.pr import write_implant_presentation_state
from tests import builders
from tests.dicomcheck import run_dciodvfy

ALGORITHM = AlgorithmInfo(name="implant-detector", version="0.3.1", family="ai")
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def _result(rows: int, cols: int) -> RadiographResult:
    return RadiographResult(
        findings=[
            ImplantFinding(box=(21.0, 68.0, 71.0, 155.0), score=0.93, system_top=(("Straumann BLT", 0.71),)),
            ImplantFinding(box=(99.0, 0.0, 123.0, 165.0), score=0.64),
        ],
        image_shape=(rows, cols),
        algorithm=ALGORITHM,
    )


def test_presentation_state_draws_boxes_and_labels(tmp_path: Path) -> None:
    source = builders.make_intraoral_radiograph(rows=200, cols=160, implants=2)
    ds = write_implant_presentation_state(source, _result(200, 160), uid_seed="job")
    path = builders.save(ds, tmp_path / "gsps.dcm")
    assert run_dciodvfy(path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == GSPS
    assert back.Modality == "PR"
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientName == source.PatientName
    assert [layer.GraphicLayer for layer in back.GraphicLayerSequence] == ["AI_IMPLANTS"]
    annotation = back.GraphicAnnotationSequence[0]
    assert annotation.GraphicLayer == "AI_IMPLANTS"
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    graphics = annotation.GraphicObjectSequence
    assert len(graphics) == 2
    for graphic, finding in zip(graphics, _result(200, 160).findings, strict=True):
        assert graphic.GraphicType == "POLYLINE"
        assert graphic.GraphicAnnotationUnits == "PIXEL"
        x0, y0, x1, y1 = finding.box
        np.testing.assert_allclose(
            np.asarray(graphic.GraphicData).reshape(-1, 2),
            [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]],
        )
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert texts == ["#1 Implant 0.93 | Straumann BLT 0.71", "#2 Implant 0.64"]
    for text in annotation.TextObjectSequence:
        left, top = text.BoundingBoxTopLeftHandCorner
        right, bottom = text.BoundingBoxBottomRightHandCorner
        assert 0 <= left < right <= 160 and 0 <= top < bottom <= 200
    voi = back.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == pytest.approx(float(source.WindowCenter))
    assert float(voi.WindowWidth) == pytest.approx(float(source.WindowWidth))
    assert back.PresentationLUTShape == "IDENTITY"
    assert back.ContributingEquipmentSequence[-1].ManufacturerModelName == ALGORITHM.name


def test_no_findings_gives_a_text_note(tmp_path: Path) -> None:
    source = builders.make_panoramic_dx(rows=300, cols=600, implants=0)
    empty = RadiographResult(findings=[], image_shape=(300, 600), algorithm=ALGORITHM)
    ds = write_implant_presentation_state(source, empty)
    path = builders.save(ds, tmp_path / "none.dcm")
    assert run_dciodvfy(path) == []
    annotation = pydicom.dcmread(path).GraphicAnnotationSequence[0]
    assert "GraphicObjectSequence" not in annotation
    assert [t.UnformattedTextValue for t in annotation.TextObjectSequence] == ["No implant found"]


def test_monochrome1_source_keeps_inverse_presentation(tmp_path: Path) -> None:
    source = builders.make_intraoral_radiograph(rows=200, cols=160, photometric="MONOCHROME1")
    ds = write_implant_presentation_state(source, _result(200, 160))
    path = builders.save(ds, tmp_path / "mono1.dcm")
    assert run_dciodvfy(path) == []
    assert pydicom.dcmread(path).PresentationLUTShape == "INVERSE"


def test_voi_lut_data_stored_as_us_is_copied(tmp_path: Path) -> None:
    """DICOM allows a VOI LUT's data as US (values) or OW (bytes); highdicom copies only
    OW, so US is handed to it as OW; the source keeps its own."""
    from pydicom.dataset import Dataset

    source = builders.make_intraoral_radiograph(rows=200, cols=160)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", ((4095 - np.arange(4096)) * 16).tolist())  # 16-bit output
    source.VOILUTSequence = [item]
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in source:
            delattr(source, keyword)
    ds = write_implant_presentation_state(source, _result(200, 160))
    path = builders.save(ds, tmp_path / "us_lut.dcm")
    assert run_dciodvfy(path) == []
    copied = pydicom.dcmread(path).SoftcopyVOILUTSequence[0].VOILUTSequence[0]
    assert np.array_equal(np.frombuffer(copied.LUTData, "<u2"), (4095 - np.arange(4096)) * 16)
    assert source.VOILUTSequence[0]["LUTData"].VR == "US"


def test_rejects_mismatched_shape_and_empty_box() -> None:
    source = builders.make_intraoral_radiograph(rows=200, cols=160)
    with pytest.raises(ValueError, match=r"image_shape \(160, 200\) does not match"):
        write_implant_presentation_state(source, _result(160, 200))
    bad = RadiographResult([ImplantFinding((50.0, 50.0, 50.0, 80.0), 0.5)], (200, 160), ALGORITHM)
    with pytest.raises(ValueError, match="empty or outside"):
        write_implant_presentation_state(source, bad)
