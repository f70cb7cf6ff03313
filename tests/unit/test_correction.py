"""The correction pipeline without HTTP: the AI's masks kept outside the correction's reach."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_service.domain import AlgorithmInfo, InputError, StorageFullError
from dicom_service.media.seg_frames import PackedMasks, segmentation_frames
from dicom_service.media.video import open_frames
from dicom_service.pipelines.base import ResultObject
from dicom_service.pipelines.correction import (
    CorrectionTooLarge,
    MaskCorrection,
    correct_tooth_masks,
    correction_bytes,
    segmentation_masks,
)
from dicom_service.pipelines.record_spool import RecordSpool
from dicom_service.vision.mask_propagation import propagate_correction
from dicom_service.writers.seg import write_tooth_segmentation
from tests import builders

ALGORITHM = AlgorithmInfo(name="test", version="1", family="ai")


@pytest.fixture(scope="module")
def segmenter():
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.tooth_predictor import ToothSegmenter
    from dicom_service.vision.tooth_sam import load_sam_bundle

    return ToothSegmenter(load_sam_bundle(default_models_dir() / "tooth_sam", "cpu")[0])


@pytest.fixture(scope="module")
def video():
    return builders.make_video_photographic(frames=8, rows=64, cols=96)


def test_the_ai_masks_stay_where_the_correction_does_not_reach(segmenter, video) -> None:
    previous = np.zeros((8, 64, 96), dtype=bool)
    previous[:, 10:20, 30:40] = True  # a mask no model would give: it can only come from `previous`
    correction = MaskCorrection(frame=4, box=np.array([5.0, 5.0, 60.0, 50.0]), radius=2)
    result = correct_tooth_masks(video, segmenter, correction, algorithm=ALGORITHM, uid_seed="t", previous=previous)
    masks = segmentation_masks(result.segmentation, str(video.SOPInstanceUID))
    assert masks is not None and masks.shape == (8, 64, 96)
    assert result.corrected_frames == (2, 6)
    for t in (0, 1, 7):
        assert np.array_equal(masks[t], previous[t]), t
    segmenter.set_image(np.stack(list(open_frames(video).frames))[4])
    assert np.array_equal(masks[4], segmenter.predict(box=correction.box).mask)
    assert result.segmentation.ContentDescription == "Corrected on frame 5 (box), +/-2 frames"


def test_segmentation_masks_read_back_what_was_written(video) -> None:
    written = np.random.default_rng(1).random((8, 64, 96)) > 0.5
    seg = write_tooth_segmentation(video, written, algorithm=ALGORITHM, uid_seed="ai")
    assert np.array_equal(segmentation_masks(seg, str(video.SOPInstanceUID)), written)
    assert segmentation_masks(seg, "1.2.3.4") is None  # about another instance
    assert segmentation_masks(builders.make_intraoral_radiograph(), str(video.SOPInstanceUID)) is None


def test_correction_input_errors(segmenter, video) -> None:
    box = np.array([5.0, 5.0, 60.0, 50.0])
    with pytest.raises(InputError, match="clicks .* or a box"):
        correct_tooth_masks(video, segmenter, MaskCorrection(frame=0), algorithm=ALGORITHM, uid_seed="t")
    with pytest.raises(InputError, match="do not match"):
        correct_tooth_masks(video, segmenter, MaskCorrection(frame=0, box=box), algorithm=ALGORITHM, uid_seed="t",
                            previous=np.zeros((7, 64, 96), dtype=bool))
    with pytest.raises(InputError, match="labels"):
        correct_tooth_masks(video, segmenter, MaskCorrection(frame=0, points=np.array([[3.0, 4.0]]),
                                                             labels=np.array([1, 0])),
                            algorithm=ALGORITHM, uid_seed="t")
    with pytest.raises(CorrectionTooLarge, match="allowed for a correction"):
        correct_tooth_masks(video, segmenter, MaskCorrection(frame=0, box=box), algorithm=ALGORITHM, uid_seed="t",
                            max_bytes=correction_bytes(8, 64, 96) - 1)
    correct_tooth_masks(video, segmenter, MaskCorrection(frame=0, box=box), algorithm=ALGORITHM, uid_seed="t",
                        max_bytes=correction_bytes(8, 64, 96))


def test_streamed_correction_equals_the_propagation_of_a_clip_in_memory(segmenter, video, tmp_path) -> None:
    frames = np.stack(list(open_frames(video).frames))
    correction = MaskCorrection(frame=5, box=np.array([5.0, 5.0, 60.0, 50.0]))
    result = correct_tooth_masks(video, segmenter, correction, algorithm=ALGORITHM, uid_seed="t", spool_dir=tmp_path)
    masks = segmentation_masks(result.segmentation, str(video.SOPInstanceUID))
    assert masks is not None and result.corrected_frames == (0, 7)
    segmenter.set_image(frames[5])
    corrected = segmenter.predict(box=correction.box).mask
    expected = propagate_correction(segmenter, frames, 5, corrected)
    assert sorted(expected) == list(range(8))
    for t in range(8):
        assert np.array_equal(masks[t], expected[t]), t
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone (unnamed, and closed)


def test_a_correction_that_would_fill_the_disk_is_refused(segmenter, video, monkeypatch) -> None:
    monkeypatch.setattr(RecordSpool, "free_bytes", staticmethod(lambda directory=None: 10 * 2**20))
    with pytest.raises(StorageFullError, match="MiB of disk"):
        correct_tooth_masks(video, segmenter, MaskCorrection(frame=7, box=np.array([5.0, 5.0, 60.0, 50.0])),
                            algorithm=ALGORITHM, uid_seed="t")
    # a correction that carries nothing backwards needs no temporary frames
    result = correct_tooth_masks(video, segmenter, MaskCorrection(frame=0, box=np.array([5.0, 5.0, 60.0, 50.0])),
                                 algorithm=ALGORITHM, uid_seed="t")
    assert result.corrected_frames == (0, 7)


def test_a_stored_segmentation_is_read_frame_by_frame_from_its_file(tmp_path) -> None:
    source = builders.make_video_photographic(frames=100, rows=18, cols=22)  # 396 px: frames not byte-aligned
    written = np.random.default_rng(2).random((100, 18, 22)) > 0.5
    seg = write_tooth_segmentation(source, written, algorithm=ALGORITHM, uid_seed="ai")
    path = tmp_path / "seg.dcm"
    with open(path, "wb") as file:
        ResultObject("seg", seg).write(file)
    frames = segmentation_frames(path, str(source.SOPInstanceUID))
    assert isinstance(frames, PackedMasks) and frames.shape == (100, 18, 22)
    assert isinstance(frames._bytes, np.memmap)  # mapped, not read
    for t in (0, 1, 37, 99, -1):
        assert np.array_equal(frames[t], written[t]), t
    assert np.array_equal(frames.all(), written)
    with pytest.raises(IndexError):
        frames[100]
    assert segmentation_frames(path, "1.2.3.4") is None
    with pytest.raises(ValueError, match="bytes"):
        PackedMasks(b"\x00" * 10, (1, 9, 9))


def test_record_spool_keeps_records_by_index(tmp_path) -> None:
    with RecordSpool([((2, 3), np.uint8), ((4,), np.float32)], tmp_path) as spool:
        assert spool.record_bytes == 6 + 16
        spool.put(2, np.full((2, 3), 7, np.uint8), np.arange(4, dtype=np.float32))
        spool.put(0, np.zeros((2, 3), np.uint8), np.ones(4, np.float32))
        a, b = spool.get(2)
        assert (a == 7).all() and b.tolist() == [0, 1, 2, 3] and a.flags.writeable
        assert spool.get(0)[1].tolist() == [1, 1, 1, 1]
        with pytest.raises(IndexError):
            spool.get(3)
        with pytest.raises(ValueError, match="is not"):
            spool.put(1, np.zeros((3, 2), np.uint8), np.ones(4, np.float32))
        with pytest.raises(ValueError, match="holds 2 arrays"):
            spool.put(1, np.zeros((2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_the_same_correction_gives_the_same_uids_and_another_one_new_ones() -> None:
    a = MaskCorrection(frame=2, points=np.array([[1.0, 2.0]]), labels=np.array([1]), radius=3)
    same = MaskCorrection(frame=2, points=np.array([[1.0, 2.0]]), labels=np.array([1]), radius=3)
    other = MaskCorrection(frame=2, points=np.array([[1.0, 2.0]]), labels=np.array([0]), radius=3)
    assert a.key() == same.key() != other.key()
    assert a.describe() == "Corrected on frame 3 (1+/0- clicks), +/-3 frames"
    assert a.describe(frames=1) == "Corrected (1+/0- clicks)"
    assert a.describe(1, frames=1) == "Correction 2 (1+/0- clicks)"
    # a radius that reaches every frame of the source is the whole clip (the same key)
    whole = MaskCorrection(frame=2, points=np.array([[1.0, 2.0]]), labels=np.array([1]))
    assert a.for_frames(5) is a and a.for_frames(4).key() == whole.key() == a.for_frames(1).key()
