"""Enhanced video writer: valid Video Photographic objects that decode back."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from dicom_service.domain import AlgorithmInfo
from dicom_service.writers.video import write_enhanced_video
from tests import builders
from tests.dicomcheck import run_dciodvfy

ALGORITHM = AlgorithmInfo(name="video-restorer", version="1.0", family="baseline")


def _decode(ds: pydicom.Dataset) -> list[np.ndarray]:
    mp4 = next(generate_frames(ds.PixelData, number_of_frames=1))
    with av.open(io.BytesIO(mp4)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    return builders.make_video_photographic(frames=6, rows=64, cols=80)


def test_enhanced_video_is_valid_and_decodes(source: pydicom.Dataset, tmp_path: Path) -> None:
    frames, _ = builders.make_intraoral_scene(frames=6, rows=64, cols=80, seed=3)
    ds = write_enhanced_video(source, frames, 30.0, uid_seed="job-v", algorithm=ALGORITHM)
    path = builders.save(ds, tmp_path / "video.dcm")
    assert run_dciodvfy(path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4.1"
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102"
    assert back.PhotometricInterpretation == "YBR_PARTIAL_420"
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (64, 80, 6)
    assert back.FrameIncrementPointer == 0x00181063
    assert float(back.FrameTime) == pytest.approx(33.333, abs=1e-3)
    for forbidden in ("PixelAspectRatio", "WindowCenter", "RescaleSlope", "ModalityLUTSequence"):
        assert forbidden not in back
    assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.DerivationDescription

    decoded = _decode(back)
    assert len(decoded) == 6
    assert decoded[0].shape == (64, 80, 3)
    # lossy, but close to what went in
    assert np.abs(decoded[2].astype(int) - frames[2].astype(int)).mean() < 12


def test_odd_sizes_are_padded_and_29_97_fps_kept(source: pydicom.Dataset, tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 45, 61, 3), dtype=np.uint8)
    ds = write_enhanced_video(source, frames, 29.97)
    path = builders.save(ds, tmp_path / "odd.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert (back.Rows, back.Columns) == (46, 62)
    assert float(back.FrameTime) == pytest.approx(33.367, abs=1e-3)
    decoded = _decode(back)
    assert len(decoded) == 3 and decoded[0].shape == (46, 62, 3)


@pytest.mark.parametrize(
    ("frames", "fps", "message"),
    [
        (np.zeros((2, 8, 8), np.uint8), 30.0, r"\(T, H, W, 3\) uint8"),
        (np.zeros((2, 8, 8, 3), np.float32), 30.0, r"\(T, H, W, 3\) uint8"),
        (np.zeros((0, 8, 8, 3), np.uint8), 30.0, r"T >= 1"),
        (np.zeros((2, 8, 8, 3), np.uint8), 0.0, r"fps must be a positive number"),
    ],
)
def test_bad_input_is_rejected(source: pydicom.Dataset, frames: np.ndarray, fps: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_enhanced_video(source, frames, fps)
