"""The test builders produce valid, re-readable DICOM (checked with dciodvfy)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_service.media.pixels import PERCENTILE_WINDOW, load_radiograph
from dicom_service.training.radiograph_phantoms import render_panoramic, render_periapical
from dicom_service.training.radiograph_scene import RadiographScene
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
    "scene_io": lambda: builders.make_radiograph_from_scene(render_periapical(1, size=(128, 160))),
    "scene_io_processing_mono1_16bit": lambda: builders.make_radiograph_from_scene(
        render_periapical(2, size=(128, 160)), photometric="MONOCHROME1", bits_stored=16, for_processing=True),
    "scene_dx_processing_8bit": lambda: builders.make_radiograph_from_scene(
        render_periapical(3, size=(128, 128)), modality="DX", bits_stored=8, for_processing=True),
    "scene_px": lambda: builders.make_radiograph_from_scene(render_panoramic(4, size=(300, 600)), modality="PX"),
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


@pytest.fixture(scope="module")
def periapical_scene() -> RadiographScene:
    return render_periapical(7, implants=2)


@pytest.mark.parametrize("for_processing", [False, True], ids=["presentation", "processing"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("bits_stored", [8, 10, 12, 16])
def test_scene_radiograph_loads_as_the_training_image(
    periapical_scene: RadiographScene, bits_stored: int, photometric: str, for_processing: bool,
) -> None:
    ds = builders.make_radiograph_from_scene(periapical_scene, bits_stored=bits_stored,
                                             photometric=photometric, for_processing=for_processing)
    assert (ds.Rows, ds.Columns) == periapical_scene.image.shape and ds.BitsStored == bits_stored
    assert ds.PresentationIntentType == ("FOR PROCESSING" if for_processing else "FOR PRESENTATION")
    assert ds.SOPClassUID == (builders.IO_PROCESSING if for_processing else builders.IO_PRESENTATION)
    stored = ds.pixel_array
    assert int(stored.max()) <= (1 << bits_stored) - 1
    image = load_radiograph(ds)
    expected = periapical_scene.image.astype(np.float64) / 4095.0
    rounding = 0.5 / ((1 << bits_stored) - 1) + 1e-6
    if for_processing:  # no VOI allowed: load_radiograph's percentile window stretches the range
        assert "WindowCenter" not in ds
        low, high = np.percentile(expected, PERCENTILE_WINDOW)
        expected = np.clip((expected - low) / (high - low), 0.0, 1.0)
        # each percentile, like each pixel, may move by the rounding of the stored values
        rounding = 3.0 * rounding / (high - low) + 1e-5
    else:
        assert (ds.WindowCenter, ds.WindowWidth) == (1 << (bits_stored - 1), 1 << bits_stored)
    assert image.shape == expected.shape and image.dtype == np.float32
    assert float(np.abs(image - expected).max()) <= rounding
    if bits_stored == 12:  # the scene's own values are stored unchanged (inverted for MONOCHROME1)
        raw = 4095 - periapical_scene.image if photometric == "MONOCHROME1" else periapical_scene.image
        assert np.array_equal(stored, raw)


def test_scene_radiograph_modalities_and_spacing() -> None:
    scene = render_panoramic(5, size=(300, 600))
    px = builders.make_radiograph_from_scene(scene, modality="PX", study_uid="1.2.3", series_uid="1.2.3.4")
    assert (px.Modality, px.SOPClassUID, px.ImageLaterality) == ("PX", builders.DX_PRESENTATION, "B")
    assert (px.StudyInstanceUID, px.SeriesInstanceUID) == ("1.2.3", "1.2.3.4")
    assert [float(v) for v in px.PixelSpacing] == pytest.approx([scene.pixel_mm] * 2)
    assert np.abs(load_radiograph(px) - scene.image / 4095.0).max() <= 0.5 / 4095 + 1e-6
    dx = builders.make_radiograph_from_scene(scene, modality="DX", for_processing=True)
    assert (dx.Modality, dx.SOPClassUID, dx.PresentationIntentType) == (
        "DX", builders.DX_PROCESSING, "FOR PROCESSING")
    with pytest.raises(ValueError, match="modality"):
        builders.make_radiograph_from_scene(scene, modality="CR")
    with pytest.raises(ValueError, match="bits_stored"):
        builders.make_radiograph_from_scene(scene, bits_stored=17)
