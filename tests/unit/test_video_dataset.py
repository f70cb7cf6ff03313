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


def test_hidden_files_are_not_frames(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["0000.jpg", "0001.jpg"], (16, 16), 40)
    _write(tmp_path / "HQ", ["0000.png", "0001.png"], (16, 16), 80)
    (tmp_path / "LQ" / "._0000.jpg").write_bytes(b"\0\5\26\7 macOS AppleDouble")  # not an image at all
    (tmp_path / "HQ" / ".DS_Store.png").write_bytes(b"")
    assert load_paired_folder(tmp_path).degraded.shape == (2, 16, 16, 3)


def test_mask_of_another_size_names_its_file(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png", "b.png"], (16, 16), 40)
    _write(tmp_path / "HQ", ["a.png", "b.png"], (16, 16), 80)
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((16, 16), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "b.png"), np.zeros((16, 20), np.uint8))
    with pytest.raises(ValueError, match=r"masks/b.png: masks differ in size: 20 x 16 but a.png is 16 x 16"):
        load_paired_folder(tmp_path)


def test_frame_of_another_size_names_its_file(tmp_path: Path) -> None:
    _write(tmp_path / "LQ", ["a.png"], (16, 16), 40)
    _write(tmp_path / "LQ", ["b.png"], (16, 18), 40)
    _write(tmp_path / "HQ", ["a.png", "b.png"], (16, 16), 80)
    with pytest.raises(ValueError, match=r"LQ/b.png: frames differ in size"):
        load_paired_folder(tmp_path)


@pytest.mark.parametrize("present, absent", [("LQ", "HQ"), ("HQ", "LQ")])
def test_half_a_clip_is_named(tmp_path: Path, present: str, absent: str) -> None:
    for clip in ("clip0", "clip1"):
        _write(tmp_path / clip / "LQ", ["a.png"], (16, 16), 40)
        _write(tmp_path / clip / "HQ", ["a.png"], (16, 16), 80)
    _write(tmp_path / "clip2" / present, ["a.png"], (16, 16), 40)
    (tmp_path / ".hidden" / "LQ").mkdir(parents=True)  # hidden folders are not clips
    with pytest.raises(ValueError, match=rf"clip2: has {present}/ but no {absent}/ folder"):
        list_paired_root(tmp_path)
    (tmp_path / "clip2" / absent).mkdir()
    assert [p.name for p in list_paired_root(tmp_path)] == ["clip0", "clip1", "clip2"]
