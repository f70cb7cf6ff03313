"""Radiograph loading: LUTs, MONOCHROME1, bit depths, compression, bad inputs."""

from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicom_service.domain import MediaError, UnsupportedInputError
from dicom_service.media.pixels import check_pixel_consistency, load_radiograph
from tests import builders


def _with_pixels(ds: Dataset, values: np.ndarray) -> Dataset:
    """Copy of a 16-bit radiograph ``ds`` holding ``values`` ``(rows, cols)`` uint16."""
    out = copy.deepcopy(ds)
    out.Rows, out.Columns = values.shape
    out.PixelData = values.astype("<u2").tobytes()
    return out


@pytest.fixture(scope="module")
def radiograph() -> tuple[Dataset, list[tuple[float, float, float, float]]]:
    return builders.make_intraoral_radiograph_with_truth(implants=1, seed=7)


def test_output_is_float32_unit_range_with_implant_white(radiograph) -> None:
    ds, boxes = radiograph
    image = load_radiograph(ds)
    assert image.shape == (ds.Rows, ds.Columns) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    assert np.percentile(image[y0:y1, x0:x1], 90) > 0.85
    assert np.median(image) < 0.5


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_monochrome1_and_monochrome2_give_the_same_orientation(bits: int) -> None:
    m2 = load_radiograph(builders.make_intraoral_radiograph(seed=2, bits_stored=bits))
    m1 = load_radiograph(builders.make_intraoral_radiograph(seed=2, bits_stored=bits, photometric="MONOCHROME1"))
    assert np.abs(m1 - m2).max() < 2.0 / (1 << bits) + 1e-3
    reference = load_radiograph(builders.make_intraoral_radiograph(seed=2, bits_stored=16))
    assert np.abs(m2 - reference).mean() < 0.01


def test_voi_window_is_applied(radiograph) -> None:
    ds, _ = radiograph
    ramp = _with_pixels(ds, np.arange(4096, dtype=np.uint16).reshape(64, 64))
    ramp.WindowCenter, ramp.WindowWidth = 2048, 1001
    image = load_radiograph(ramp).ravel()
    low = 2048 - 0.5 - 1000 / 2
    expected = np.clip((np.arange(4096) - low) / 1000.0, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    ramp.VOILUTFunction = "SIGMOID"
    sigmoid = load_radiograph(ramp).ravel()
    assert sigmoid[2048] == pytest.approx(0.5, abs=0.01) and sigmoid[0] < 0.01 and sigmoid[-1] > 0.99


def test_rescale_is_applied_before_the_window(radiograph) -> None:
    ds, _ = radiograph
    plain = load_radiograph(ds)
    shifted = copy.deepcopy(ds)
    shifted.RescaleSlope, shifted.RescaleIntercept = 2, -1000
    shifted.WindowCenter = float(ds.WindowCenter) * 2 - 1000
    shifted.WindowWidth = (float(ds.WindowWidth) - 1) * 2 + 1
    assert np.abs(load_radiograph(shifted) - plain).max() < 1e-3


def test_voi_lut_sequence_is_applied(radiograph) -> None:
    ds, _ = radiograph
    ramp = _with_pixels(ds, np.arange(4096, dtype=np.uint16).reshape(64, 64))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = (4095 - np.arange(4096)).astype(np.uint16).tolist()  # an inverting LUT
    ramp.VOILUTSequence = [item]
    image = load_radiograph(ramp).ravel()
    np.testing.assert_allclose(image, 1.0 - np.arange(4096) / 4095.0, atol=1e-5)


def test_bad_voi_luts_tiny_and_uniform_images_fail_clearly(radiograph) -> None:
    """A VOI LUT whose descriptor and data disagree is a MediaError naming it (it was an
    IndexError, retried); an image under 32 pixels a side is not a radiograph; a uniform
    one (Rescale Slope 0) has nothing to analyse (it was reported as "no implant")."""
    ds, _ = radiograph
    ramp = _with_pixels(ds, np.arange(4096, dtype=np.uint16).reshape(64, 64))
    for descriptor, data, message in (([4096, 0, 16], list(range(100)), "says 4096 entries, its LUT Data holds 100"),
                                      ([0, 0, 16], [0, 1], "says 65536 entries, its LUT Data holds 2")):
        item = Dataset()
        item.LUTDescriptor = descriptor
        item.LUTData = data
        bad = copy.deepcopy(ramp)
        bad.VOILUTSequence = [item]
        with pytest.raises(MediaError, match=f"VOI LUT Sequence is malformed: .*{message}"):
            load_radiograph(bad)
    with pytest.raises(UnsupportedInputError, match="too small to be a radiograph"):
        load_radiograph(_with_pixels(ds, np.arange(5 * 400, dtype=np.uint16).reshape(5, 400)))
    flat = copy.deepcopy(ds)
    flat.RescaleSlope, flat.RescaleIntercept = 0, 100
    with pytest.raises(MediaError, match=r"uniform after its Modality LUT \(every pixel 100, Rescale Slope 0\)"):
        load_radiograph(flat)


def test_for_processing_without_voi_uses_a_percentile_window() -> None:
    ds = builders.make_intraoral_radiograph(for_processing=True, seed=3)
    assert "WindowCenter" not in ds
    image = load_radiograph(ds)
    assert 0.001 < np.mean(image >= 1.0) < 0.02
    assert 0.001 < np.mean(image <= 0.0) < 0.02


def test_multi_frame_returns_the_first_frame(radiograph) -> None:
    ds, _ = radiograph
    first = load_radiograph(ds)
    multi = copy.deepcopy(ds)
    multi.NumberOfFrames = 2
    multi.PixelData = ds.PixelData + bytes(len(ds.PixelData))
    np.testing.assert_array_equal(load_radiograph(multi), first)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_pixel_data_decodes_like_native(radiograph, syntax) -> None:
    ds, _ = radiograph
    compressed = copy.deepcopy(ds)
    compressed.compress(syntax)
    check_pixel_consistency(compressed)
    np.testing.assert_array_equal(load_radiograph(compressed), load_radiograph(ds))


def test_colour_is_rejected_as_unsupported() -> None:
    for ds in (builders.make_colour_photo_as_dx(rows=64, cols=80),
               builders.make_vl_photographic_jpeg(rows=64, cols=80)):
        with pytest.raises(UnsupportedInputError, match="colour photograph .*cannot be a radiograph"):
            load_radiograph(ds)


def test_oversized_rows_raise_media_error(radiograph) -> None:
    big = builders.oversized_rows(radiograph[0])
    with pytest.raises(MediaError, match="pixel data holds"):
        check_pixel_consistency(big)
    with pytest.raises(MediaError):
        load_radiograph(big)


def test_truncated_file_raises_media_error() -> None:
    ds = builders.make_intraoral_radiograph(rows=128, cols=128)
    back = pydicom.dcmread(io.BytesIO(builders.truncated_bytes(ds)))
    with pytest.raises(MediaError):
        load_radiograph(back)


def test_encapsulated_checks_and_decode_failures(radiograph) -> None:
    check_pixel_consistency(builders.make_vl_photographic_jpeg(rows=32, cols=48))
    empty = builders.make_vl_photographic_jpeg(rows=32, cols=48)
    empty.PixelData = encapsulate([], has_bot=True)
    with pytest.raises(MediaError, match="no fragment"):
        check_pixel_consistency(empty)
    # held in memory (a C-STORE's data set): a fragment whose length runs past the data
    lying = builders.make_vl_photographic_jpeg(rows=32, cols=48)
    data = bytearray(lying.PixelData)
    item = data.rfind(b"\xfe\xff\x00\xe0")
    data[item + 4:item + 8] = (len(data) + 100).to_bytes(4, "little")
    lying.PixelData = bytes(data)
    with pytest.raises(MediaError, match=r"malformed: item \(FFFE,E000\) of"):
        check_pixel_consistency(lying)
    corrupt = copy.deepcopy(radiograph[0])
    corrupt.compress(JPEG2000Lossless)
    corrupt.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)], has_bot=True)
    with pytest.raises(MediaError, match="cannot be decoded"):
        load_radiograph(corrupt)


def test_missing_pixel_data_and_instances_without_pixels(radiograph) -> None:
    bare = copy.deepcopy(radiograph[0])
    del bare.PixelData
    check_pixel_consistency(bare)  # e.g. an SR: nothing to check
    with pytest.raises(MediaError, match="no pixel data"):
        load_radiograph(bare)


def test_pixel_data_left_in_its_file_is_checked_there(radiograph, tmp_path) -> None:
    """Read with ``defer_size`` (as the service and the offline mode read files), the check
    leaves the pixel data in the file: native data's length is compared with the header and
    the file's size, encapsulated data's item headers are walked."""
    from dicom_service.media.pixel_file import DEFER_BYTES, deferred_pixel_data

    native = builders.save(radiograph[0], tmp_path / "native.dcm")
    ds = pydicom.dcmread(native, defer_size=DEFER_BYTES)
    check_pixel_consistency(ds)
    assert deferred_pixel_data(ds) is not None  # not read to be checked
    assert load_radiograph(ds).shape == (416, 416)  # and decoded from the file when needed

    short = copy.deepcopy(ds)
    short.Rows = 417  # the header now declares more than the file holds
    with pytest.raises(MediaError, match="holds"):
        check_pixel_consistency(short)

    cut = tmp_path / "cut.dcm"
    cut.write_bytes(builders.truncated_bytes(radiograph[0]))
    with pytest.raises(MediaError, match="ends inside"):
        check_pixel_consistency(pydicom.dcmread(cut, defer_size=DEFER_BYTES))

    video = builders.save(builders.make_video_photographic(frames=30, rows=240, cols=320), tmp_path / "v.dcm")
    ds = pydicom.dcmread(video, defer_size=1024)  # a short clip: under DEFER_BYTES
    assert deferred_pixel_data(ds) is not None
    check_pixel_consistency(ds)
    assert deferred_pixel_data(ds) is not None
    data = bytearray(video.read_bytes())
    item = data.rfind(b"\xfe\xff\x00\xe0")  # the last item header: make it run past the file's end
    data[item + 4:item + 8] = (len(data)).to_bytes(4, "little")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    with pytest.raises(MediaError, match="malformed"):
        check_pixel_consistency(pydicom.dcmread(broken, defer_size=1024))
