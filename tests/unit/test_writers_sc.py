"""Secondary Capture writer and the burned-in rendering of implant findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_service.domain import AlgorithmInfo, ImplantFinding, ImplantPart
from dicom_service.media.pixels import load_radiograph
from dicom_service.writers.sc import render_findings, write_secondary_capture
from tests import builders
from tests.dicomcheck import run_dciodvfy

ALGORITHM = AlgorithmInfo(name="implant-detector", version="0.3.1", family="ai")
AMBER = (255, 210, 0)


def _finding() -> ImplantFinding:
    return ImplantFinding(
        box=(21.0, 68.0, 71.0, 155.0),
        score=0.93,
        parts=(ImplantPart("coronal", (21.0, 68.0, 71.0, 95.0), 0.8),),
        system_top=(("Straumann BLT", 0.71),),
        axis=(46.0, 68.0, 46.0, 155.0),
    )


def test_render_findings_draws_box_and_label() -> None:
    image = np.full((200, 160), 0.25, dtype=np.float32)
    rgb = render_findings(image, [_finding()])
    assert rgb.shape == (200, 160, 3) and rgb.dtype == np.uint8
    # the left edge of the box (x = 21) is amber below the label, grey pixels stay grey
    assert tuple(rgb[120, 21]) == AMBER
    assert tuple(rgb[190, 150]) == (64, 64, 64)
    # the label sits just above the box
    assert np.all(rgb[50:68, 21:60] == AMBER, axis=-1).any()


def test_render_no_findings_draws_banner_only() -> None:
    image = np.full((120, 200), 0.5, dtype=np.float32)
    rgb = render_findings(image, [])
    banner = np.all(rgb == AMBER, axis=-1)
    assert banner[:30, :].sum() > 100
    assert not banner[40:, :].any()


def test_render_rejects_colour_input() -> None:
    with pytest.raises(ValueError, match=r"\(rows, cols\)"):
        render_findings(np.zeros((10, 10, 3), np.float32), [])


def test_secondary_capture_is_valid_and_copies_patient_study(tmp_path: Path) -> None:
    source = builders.make_intraoral_radiograph(rows=200, cols=160, implants=1)
    rgb = render_findings(load_radiograph(source), [_finding()])
    ds = write_secondary_capture(
        source, rgb, description="AI implants (burned in)", series_number=9001,
        uid_seed="job-1", algorithm=ALGORITHM,
    )
    path = builders.save(ds, tmp_path / "sc.dcm")
    assert run_dciodvfy(path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(back.pixel_array, rgb)
    assert back.PhotometricInterpretation == "RGB"
    assert back.BurnedInAnnotation == "YES"
    assert back.ConversionType == "WSD"
    assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyID",
                    "AccessionNumber", "ReferringPhysicianName", "StudyDate"):
        assert back[keyword].value == source[keyword].value, keyword
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.SeriesNumber == 9001
    assert back.Manufacturer == "Dental AI Node"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    item = back.ContributingEquipmentSequence[-1]
    assert item.ManufacturerModelName == ALGORITHM.name
    code = item.PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("Newcode1", "99IHE")
    assert "99IHE" in {i.CodingSchemeDesignator for i in back.CodingSchemeIdentificationSequence}


def test_enhanced_photo_capture_has_no_burned_in_annotation(tmp_path: Path) -> None:
    source = builders.make_vl_photographic_jpeg(rows=61, cols=81)
    rgb = np.random.default_rng(0).integers(0, 256, (61, 81, 3), dtype=np.uint8)
    ds = write_secondary_capture(source, rgb, description="Enhanced photo", series_number=9105,
                                 burned_in_annotation=False)
    path = builders.save(ds, tmp_path / "photo.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.BurnedInAnnotation == "NO"
    np.testing.assert_array_equal(back.pixel_array, rgb)


def test_uids_are_deterministic_for_a_seed() -> None:
    source = builders.make_intraoral_radiograph(rows=64, cols=64)
    rgb = np.zeros((64, 64, 3), np.uint8)
    first = write_secondary_capture(source, rgb, description="x", series_number=1, uid_seed="s")
    again = write_secondary_capture(source, rgb, description="x", series_number=1, uid_seed="s")
    other = write_secondary_capture(source, rgb, description="x", series_number=1, uid_seed="t")
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)]
)
def test_secondary_capture_rejects_bad_pixels(bad: np.ndarray) -> None:
    source = builders.make_intraoral_radiograph(rows=64, cols=64)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        write_secondary_capture(source, bad, description="x", series_number=1)
