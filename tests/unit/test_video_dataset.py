"""Real paired video folders (Vident-real layout): LQ/, HQ/, optional masks/."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_service.training.video_dataset import list_paired_root, load_paired_folder


def _write(folder: Path, names: list[str], shape: tuple[int, int], value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        img = np.full((*shape, 3), value + i, np.uint8)
        img[..., 0] = 10  # BGR blue: comes back as RGB channel 2
        cv2.imwrite(str(folder / name), img)


def test_load_paired_folder(tmp_path: Path) -> None:
    clip_dir = tmp_path / "clip_a"
    _write(clip_dir / "LQ", ["0001.png", "0002.png"], (24, 32), 50)
    _write(clip_dir / "HQ", ["0001.png", "0002.png"], (24, 32), 100)
    (clip_dir / "masks").mkdir()
    for name in ("0001.png", "0002.png"):
        mask = np.zeros((24, 32), np.uint8)
        mask[5:10, 3:8] = 255
        cv2.imwrite(str(clip_dir / "masks" / name), mask)
    clip = load_paired_folder(clip_dir, fps=25.0)
    assert clip.clean.shape == clip.degraded.shape == (2, 24, 32, 3)
    assert clip.clean[1, 0, 0, 0] == 101 and clip.clean[0, 0, 0, 2] == 10  # RGB order
    assert clip.degraded[0, 0, 0, 0] == 50
    assert clip.masks is not None and clip.masks.sum() == 2 * 25
    assert clip.flow is None and clip.fps == 25.0 and clip.name == "clip_a"
    (tmp_path / "not_a_clip").mkdir()
    assert list_paired_root(tmp_path) == [clip_dir]


def test_masks_optional(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.jpg"], (16, 16), 40)
    _write(tmp_path / "HQ", ["a.png"], (16, 16), 80)
    assert load_paired_folder(tmp_path).masks is None


def test_missing_folder(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png"], (16, 16), 40)
    with pytest.raises(ValueError, match="missing HQ/"):
        load_paired_folder(tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png", "b.png"], (16, 16), 40)
    _write(tmp_path / "HQ", ["a.png"], (16, 16), 80)
    with pytest.raises(ValueError, match="2 LQ frames but 1 HQ"):
        load_paired_folder(tmp_path)


def test_name_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png"], (16, 16), 40)
    _write(tmp_path / "HQ", ["b.png"], (16, 16), 80)
    with pytest.raises(ValueError, match="names differ"):
        load_paired_folder(tmp_path)


def test_size_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png"], (16, 16), 40)
    _write(tmp_path / "HQ", ["a.png"], (16, 20), 80)
    with pytest.raises(ValueError, match="LQ frames are"):
        load_paired_folder(tmp_path)


def test_frame_size_differs_within_folder(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png"], (16, 16), 40)
    _write(tmp_path / "LQ", ["b.png"], (16, 18), 40)
    _write(tmp_path / "HQ", ["a.png", "b.png"], (16, 16), 80)
    with pytest.raises(ValueError, match="differ in size"):
        load_paired_folder(tmp_path)


def test_mask_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png"], (16, 16), 40)
    _write(tmp_path / "HQ", ["a.png"], (16, 16), 80)
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="masks/"):
        load_paired_folder(tmp_path)


def test_empty_and_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "LQ").mkdir()
    (tmp_path / "HQ").mkdir()
    with pytest.raises(ValueError, match="no .png/.jpg"):
        load_paired_folder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        list_paired_root(tmp_path / "nope")
