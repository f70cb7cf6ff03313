"""Segmentation writers: tooth SEG of videos/photos (pydicom) and implant SEG (highdicom)."""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_service.domain import AlgorithmInfo, ImplantFinding, ImplantPart, RadiographResult
from dicom_service.writers.seg import write_implant_segmentation, write_tooth_segmentation
from tests import builders
from tests.dicomcheck import run_dciodvfy

TOOTH_ALGORITHM = AlgorithmInfo(name="tooth-segmenter", version="0.2", family="ai", parameters="thr=0.5")
IMPLANT_ALGORITHM = AlgorithmInfo(name="implant-baseline", version="0.1", family="baseline")


@pytest.fixture(scope="module")
def video() -> pydicom.Dataset:
    return builders.make_video_photographic(frames=5, rows=48, cols=64)


def _tooth_masks(video: pydicom.Dataset) -> np.ndarray:
    masks = np.random.default_rng(7).random((5, 48, 64)) > 0.7
    masks[2] = False  # an empty frame must be kept
    return masks


def test_tooth_seg_of_video_is_valid_and_reads_back(video: pydicom.Dataset, tmp_path: Path) -> None:
    masks = _tooth_masks(video)
    ds = write_tooth_segmentation(video, masks, algorithm=TOOTH_ALGORITHM, uid_seed="job-s")
    path = builders.save(ds, tmp_path / "tooth.dcm")
    assert run_dciodvfy(path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert back.SegmentationType == "BINARY"
    assert "FrameOfReferenceUID" not in back
    assert back.NumberOfFrames == 5
    for k, item in enumerate(back.PerFrameFunctionalGroupsSequence, start=1):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == video.SOPInstanceUID
        assert ref.ReferencedFrameNumber == k
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert list(item.FrameContentSequence[0].DimensionIndexValues) == [1, k]
    segment = back.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "38199008"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == TOOTH_ALGORITHM.name

    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=video.SOPInstanceUID,
        source_frame_numbers=[1, 2, 3, 4, 5],
        segment_numbers=[1],
    )
    assert pixels.shape == (5, 48, 64, 1)
    for k in range(5):
        np.testing.assert_array_equal(pixels[k, :, :, 0].astype(bool), masks[k])


def test_tooth_seg_of_single_photo(tmp_path: Path) -> None:
    photo = builders.make_vl_photographic_jpeg(rows=40, cols=56)
    masks = np.zeros((1, 40, 56), dtype=np.uint8)
    masks[0, 10:30, 5:50] = 1
    ds = write_tooth_segmentation(photo, masks, algorithm=TOOTH_ALGORITHM)
    path = builders.save(ds, tmp_path / "photo-seg.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    ref = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert "ReferencedFrameNumber" not in ref
    assert back.LossyImageCompression == "01"  # derived from a JPEG
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance([photo.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], masks[0])


@pytest.mark.parametrize("shape", [(4, 48, 64), (5, 64, 48), (5, 48), (1, 5, 48, 64)])
def test_tooth_seg_rejects_masks_not_matching_the_frames(
    video: pydicom.Dataset, shape: tuple[int, ...]
) -> None:
    expected = r"does not match the source frames \(NumberOfFrames, Rows, Columns\) = \(5, 48, 64\)"
    with pytest.raises(ValueError, match=rf"masks shape {re.escape(str(shape))} {expected}"):
        write_tooth_segmentation(video, np.zeros(shape, bool), algorithm=TOOTH_ALGORITHM)


def test_tooth_seg_rejects_non_binary_masks(video: pydicom.Dataset) -> None:
    with pytest.raises(ValueError, match="bool or 0/1"):
        write_tooth_segmentation(video, np.full((5, 48, 64), 2, np.uint8), algorithm=TOOTH_ALGORITHM)
    with pytest.raises(ValueError, match="bool or 0/1"):
        write_tooth_segmentation(video, np.zeros((5, 48, 64), np.float32), algorithm=TOOTH_ALGORITHM)


def test_tooth_seg_rejects_unknown_algorithm_family(video: pydicom.Dataset) -> None:
    algorithm = AlgorithmInfo(name="x", version="1", family="magic")
    with pytest.raises(ValueError, match="unknown algorithm family 'magic'"):
        write_tooth_segmentation(video, _tooth_masks(video), algorithm=algorithm)


def test_tooth_seg_uids_are_deterministic(video: pydicom.Dataset) -> None:
    masks = _tooth_masks(video)
    a = write_tooth_segmentation(video, masks, algorithm=TOOTH_ALGORITHM, uid_seed="retry")
    b = write_tooth_segmentation(video, masks, algorithm=TOOTH_ALGORITHM, uid_seed="retry")
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.DimensionOrganizationSequence[0].DimensionOrganizationUID == \
        b.DimensionOrganizationSequence[0].DimensionOrganizationUID


def _implant_result(rows: int, cols: int) -> RadiographResult:
    return RadiographResult(
        findings=[
            ImplantFinding(
                box=(21.0, 68.0, 71.0, 155.0), score=0.9,
                parts=(ImplantPart("coronal", (21.0, 68.0, 71.0, 90.0), 0.8),
                       ImplantPart("apical", (21.0, 130.0, 71.0, 155.0), 0.7)),
            ),
            ImplantFinding(box=(99.5, 66.2, 123.0, 165.0), score=0.6),
        ],
        image_shape=(rows, cols),
        algorithm=IMPLANT_ALGORITHM,
    )


def test_implant_seg_is_valid_and_reads_back(tmp_path: Path) -> None:
    source = builders.make_intraoral_radiograph(rows=200, cols=160, implants=2)
    ds = write_implant_segmentation(source, _implant_result(200, 160), uid_seed="job-i")
    path = builders.save(ds, tmp_path / "implant-seg.dcm")
    assert run_dciodvfy(path) == []

    seg = hd.seg.segread(path)
    labels = [item.SegmentLabel for item in seg.SegmentSequence]
    assert labels == ["Implant", "Implant part coronal", "Implant part apical"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "40388003"
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2, 3])
    expected = np.zeros((200, 160), bool)
    expected[68:155, 21:71] = True
    expected[66:165, 99:123] = True  # fractional edges are rounded outwards
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), expected)
    assert pixels[0, :, :, 1].sum() == 22 * 50
    assert pixels[0, :, :, 2].sum() == 25 * 50


def test_implant_seg_without_findings_is_refused() -> None:
    source = builders.make_intraoral_radiograph(rows=64, cols=64, implants=0)
    empty = RadiographResult(findings=[], image_shape=(64, 64), algorithm=IMPLANT_ALGORITHM)
    with pytest.raises(ValueError, match="^no findings$"):
        write_implant_segmentation(source, empty)


def test_implant_seg_rejects_wrong_image_shape() -> None:
    source = builders.make_intraoral_radiograph(rows=200, cols=160)
    with pytest.raises(ValueError, match=r"image_shape \(160, 200\) does not match"):
        write_implant_segmentation(source, _implant_result(160, 200))


def test_tooth_seg_of_a_source_with_a_frame_of_reference(video: pydicom.Dataset, tmp_path) -> None:
    """Written as for any camera image: frame by frame references, no Frame of Reference of
    its own (the IOD needs none with Derivation Image items); it passes dciodvfy."""
    with_for = pydicom.Dataset()
    with_for.update(video)
    with_for.file_meta = video.file_meta
    with_for.FrameOfReferenceUID = "1.2.3.4"
    seg = write_tooth_segmentation(with_for, _tooth_masks(video), algorithm=TOOTH_ALGORITHM)
    assert "FrameOfReferenceUID" not in seg
    assert run_dciodvfy(builders.save(seg, tmp_path / "seg.dcm")) == []


def test_mask_packing_equals_pydicom_pack_bits() -> None:
    """The tooth SEG packs its bits itself (no full-size temporary copies); the bytes are
    pydicom's ``pack_bits`` for every shape, including sizes that are not a multiple of 8."""
    import numpy as np
    from pydicom.pixels import pack_bits

    from dicom_service.writers.seg import _pack_masks

    rng = np.random.default_rng(0)
    for shape in ((1, 8, 8), (3, 7, 5), (2, 13, 11), (4, 16, 24), (1, 1, 1)):
        masks = rng.random(shape) > 0.5
        assert _pack_masks(masks) == pack_bits(masks.reshape(-1), pad=True), shape


def test_mask_packing_spooled_to_a_file_gives_the_same_bytes() -> None:
    """With a spool file the packed bits go to disk as the masks come; the completed spool
    (last bits, padding) holds exactly the in-memory packing, is handed on rewound as the
    Pixel Data, and takes no more masks."""
    import tempfile

    import numpy as np
    from pydicom.pixels import pack_bits

    from dicom_service.writers.seg import MaskPacker

    rng = np.random.default_rng(1)
    for shape in ((1, 8, 8), (3, 7, 5), (2, 13, 11), (5, 3, 3)):
        masks = rng.random(shape) > 0.5
        with tempfile.TemporaryFile() as spool:
            packer = MaskPacker(*shape[1:], spool=spool)
            for mask in masks:
                packer.add(mask)
            expected = pack_bits(masks.reshape(-1), pad=True)
            assert packer.pixel_data() == expected, shape  # before it is sealed
            value = packer.pixel_value()
            assert value is spool and value.tell() == 0 and value.read() == expected, shape
            assert packer.pixel_data() == expected and packer.pixel_value().read() == expected
            with pytest.raises(ValueError, match="already handed on"):
                packer.add(masks[0])


def test_a_streamed_video_segmentation_is_written_from_its_spool(tmp_path) -> None:
    """The SEG of a spooled packer has the spool as its Pixel Data; written out, it equals
    the SEG of the same masks held in memory, and passes dciodvfy."""
    import io
    import tempfile

    import numpy as np
    from pydicom import dcmread

    from dicom_service.pipelines.base import ResultObject
    from dicom_service.writers.seg import MaskPacker

    video = builders.make_video_photographic(frames=5, rows=48, cols=64)
    masks = np.random.default_rng(2).random((5, 48, 64)) > 0.5
    in_memory = write_tooth_segmentation(video, masks, algorithm=TOOTH_ALGORITHM, uid_seed="x")
    with tempfile.TemporaryFile() as spool:
        packer = MaskPacker(48, 64, spool=spool)
        for mask in masks:
            packer.add(mask)
        spooled = write_tooth_segmentation(video, packer, algorithm=TOOTH_ALGORITHM, uid_seed="x")
        assert spooled.PixelData is spool
        path = tmp_path / "seg.dcm"
        with open(path, "wb") as fh:
            ResultObject("seg", spooled).write(fh)
        assert run_dciodvfy(path) == []
        assert dcmread(path).PixelData == in_memory.PixelData
        assert dcmread(io.BytesIO(ResultObject("seg", spooled).to_bytes())).PixelData == in_memory.PixelData
