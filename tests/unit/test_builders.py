"""The test builders produce valid, re-readable DICOM (checked with dciodvfy)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_service.uids import is_valid_uid
from tests import builders
from tests.dicomcheck import run_dciodvfy

VALID_BUILDERS: dict[str, Callable[[], Dataset]] = {
    "io_presentation": lambda: builders.make_intraoral_radiograph(),
    "io_two_implants_mono1_16bit": lambda: builders.make_intraoral_radiograph(
        implants=2, photometric="MONOCHROME1", bits_stored=16),
    "io_processing_8bit": lambda: builders.make_intraoral_radiograph(for_processing=True, bits_stored=8),
    "io_no_implant": lambda: builders.make_intraoral_radiograph(implants=0),
    "panoramic": lambda: builders.make_panoramic_dx(rows=500, cols=1000),
    "video": lambda: builders.make_video_photographic(frames=8, rows=240, cols=320),
    "video_odd_size": lambda: builders.make_video_photographic(frames=3, rows=101, cols=135, fps=29.97),
    "vl_photo_jpeg": lambda: builders.make_vl_photographic_jpeg(rows=240, cols=320),
}


@pytest.mark.parametrize("name", sorted(VALID_BUILDERS))
def test_builder_output_passes_dciodvfy_and_rereads(name: str, tmp_path: Path) -> None:
    ds = VALID_BUILDERS[name]()
    path = builders.save(ds, tmp_path / f"{name}.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert str(back.PatientName) == builders.PATIENT_NAME
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert is_valid_uid(str(back[keyword].value))


def test_uids_are_passed_through_and_pixels_are_deterministic() -> None:
    a = builders.make_intraoral_radiograph(seed=3, study_uid="1.2.3", series_uid="1.2.3.4")
    b = builders.make_intraoral_radiograph(seed=3, study_uid="1.2.3", series_uid="1.2.3.4")
    c = builders.make_intraoral_radiograph(seed=4)
    assert (a.StudyInstanceUID, a.SeriesInstanceUID) == ("1.2.3", "1.2.3.4")
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.PixelData == b.PixelData
    assert a.PixelData != c.PixelData


def test_truth_boxes_lie_inside_the_image_and_are_implant_sized() -> None:
    ds, boxes = builders.make_intraoral_radiograph_with_truth(implants=2, seed=1)
    assert len(boxes) == 2
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= ds.Columns and 0 <= y0 < y1 <= ds.Rows
        assert 0.3 * ds.Rows <= y1 - y0 <= 0.55 * ds.Rows
    pano, pano_boxes = builders.make_panoramic_dx_with_truth(rows=500, cols=1000, seed=2)
    assert len(pano_boxes) == 3
    assert pano.Modality == "PX"


def test_monochrome1_stores_inverted_values() -> None:
    m2 = builders.make_intraoral_radiograph(seed=5).pixel_array.astype(np.int32)
    m1 = builders.make_intraoral_radiograph(seed=5, photometric="MONOCHROME1").pixel_array.astype(np.int32)
    assert np.array_equal(m1, 4095 - m2)


def test_scene_masks_cover_the_teeth() -> None:
    frames, masks = builders.make_intraoral_scene(frames=4, rows=120, cols=160, seed=1)
    assert frames.shape == (4, 120, 160, 3) and frames.dtype == np.uint8
    assert masks.shape == (4, 120, 160) and masks.dtype == bool
    assert 0.2 < masks.mean() < 0.8
    assert frames[masks].mean() > frames[~masks].mean() + 30


def test_bad_inputs(tmp_path: Path) -> None:
    ds = builders.make_intraoral_radiograph(rows=128, cols=128)
    full = builders.save(ds, tmp_path / "full.dcm").read_bytes()
    cut = builders.truncated_bytes(ds)
    assert len(cut) < len(full) and full.startswith(cut[:1000])
    junk = builders.non_dicom_bytes()
    assert junk[128:132] != b"DICM"
    assert builders.mismatched_sop_class(ds).SOPClassUID == builders.VIDEO_PHOTOGRAPHIC
    big = builders.oversized_rows(ds)
    assert big.Rows * big.Columns * 2 > len(big.PixelData)
    bad = builders.with_uid(ds)
    assert bad.SOPInstanceUID == "1.2/../../etc"
    assert ds.SOPInstanceUID != bad.SOPInstanceUID
    colour = builders.make_colour_photo_as_dx(rows=64, cols=80)
    assert colour.SamplesPerPixel == 3 and colour.SOPClassUID == builders.DX_PRESENTATION
