"""Synthetic intraoral video clips: determinism, shapes, exact flow, masks, data set round trip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from dicom_service.training.image_metrics import psnr, ssim
from dicom_service.training.video_dataset import list_split, load_clip
from dicom_service.training.video_phantoms import (
    ROLL_FRAMES,
    VideoClip,
    camera_path,
    clip_degradation,
    clip_seed,
    grain_free_clean,
    render_clip,
    write_dataset,
)

SMALL = {"frames": 4, "height": 96, "width": 128}


def test_same_seed_same_arrays_different_seed_different() -> None:
    a, b, c = render_clip(5, **SMALL), render_clip(5, **SMALL), render_clip(6, **SMALL)
    for name in ("clean", "degraded", "masks", "flow"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.clean, c.clean)
    assert not np.array_equal(a.degraded, c.degraded)


def test_shapes_and_dtypes() -> None:
    clip = render_clip(1, **SMALL, fps=25.0)
    assert clip.clean.shape == clip.degraded.shape == (4, 96, 128, 3)
    assert clip.clean.dtype == clip.degraded.dtype == np.uint8
    assert clip.masks is not None and clip.masks.shape == (4, 96, 128) and clip.masks.dtype == bool
    assert clip.flow is not None and clip.flow.shape == (3, 96, 128, 2) and clip.flow.dtype == np.float32
    assert clip.fps == 25.0 and clip.name == "seed_1"


@pytest.mark.parametrize("seed, instrument", [(2, False), (3, True)])
def test_flow_warps_next_frame_onto_current(seed: int, instrument: bool) -> None:
    clip = render_clip(seed, frames=5, height=120, width=160, instrument=instrument)
    assert clip.flow is not None
    h, w = clip.clean.shape[1:3]
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for t in range(clip.flow.shape[0]):
        mx, my = xx + clip.flow[t, ..., 0], yy + clip.flow[t, ..., 1]
        warped = cv2.remap(clip.clean[t + 1], mx, my, cv2.INTER_LINEAR)
        inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        err = np.abs(warped.astype(np.float32) - clip.clean[t].astype(np.float32))[inside].mean()
        assert err < 6.0, f"frame {t}: mean abs error {err:.2f}"
        # a zero flow would not explain the motion: the check has teeth
        still = np.abs(clip.clean[t + 1].astype(np.float32) - clip.clean[t].astype(np.float32)).mean()
        assert still > err


def test_masks_follow_teeth_override() -> None:
    with_teeth = render_clip(0, **SMALL, teeth=True)
    without = render_clip(0, **SMALL, teeth=False)
    assert with_teeth.masks is not None and with_teeth.masks.mean() > 0.05
    assert without.masks is not None and not without.masks.any()


def test_degraded_is_worse_than_clean() -> None:
    clip = render_clip(4, **SMALL)
    assert psnr(clip.degraded, clip.clean) < 30.0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="frames"):
        render_clip(0, frames=1)
    with pytest.raises(ValueError, match="split"):
        clip_seed(0, "holdout", 0)
    with pytest.raises(ValueError, match="index"):
        clip_seed(0, "test", 100_000)


def test_split_seeds_are_disjoint() -> None:
    splits = ("train", "val", "test")
    seeds = {split: {clip_seed(s, split, i) for s in range(3) for i in range(200)} for split in splits}
    assert not seeds["train"] & seeds["val"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]


def test_write_dataset_in_several_processes_writes_the_same_clips(tmp_path) -> None:
    sizes = {"train": 3, "val": 1, "test": 1, "frames": 3, "height": 64, "width": 80, "seed": 2}
    one = json.loads(write_dataset(tmp_path / "one", **sizes).read_text())
    calls = []
    two = json.loads(write_dataset(tmp_path / "two", **sizes, workers=2,
                                   progress=lambda done, total, name: calls.append((done, total, name))).read_text())
    assert one == two
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5] and sorted(c[2] for c in calls) == sorted(
        [f"train/clip_{i:05d}.npz" for i in range(3)] + ["val/clip_00000.npz", "test/clip_00000.npz"])
    for split in ("train", "val", "test"):
        for a, b in zip(list_split(tmp_path / "one", split), list_split(tmp_path / "two", split), strict=True):
            x, y = load_clip(a), load_clip(b)
            for name in ("clean", "degraded", "masks", "flow"):
                np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
    with pytest.raises(ValueError, match="workers"):
        write_dataset(tmp_path / "none", **sizes, workers=0)


def test_write_dataset_round_trip(tmp_path) -> None:
    calls = []
    manifest = write_dataset(tmp_path, train=2, val=1, test=1, frames=3, height=64, width=80, seed=7,
                             progress=lambda done, total, name: calls.append((done, total, name)))
    doc = json.loads(manifest.read_text())
    assert doc["splits"]["train"]["seeds"] == [clip_seed(7, "train", 0), clip_seed(7, "train", 1)]
    assert [c[0] for c in calls] == [1, 2, 3, 4] and calls[-1][1] == 4
    paths = list_split(tmp_path, "train")
    assert [p.name for p in paths] == ["clip_00000.npz", "clip_00001.npz"]
    clip = load_clip(paths[1])
    again = render_clip(clip_seed(7, "train", 1), frames=3, height=64, width=80)
    np.testing.assert_array_equal(clip.degraded, again.degraded)
    assert clip.flow is not None and again.flow is not None
    np.testing.assert_array_equal(clip.flow, again.flow)
    assert len(list_split(tmp_path, "test")) == 1
    with pytest.raises(ValueError, match="unknown split"):
        list_split(tmp_path, "holdout")
    with pytest.raises(ValueError, match="manifest"):
        list_split(tmp_path / "train", "train")


def test_grain_free_clean_differs_only_by_the_pixel_grain() -> None:
    clip = render_clip(clip_seed(0, "test", 3), frames=3, height=96, width=128)
    smooth = grain_free_clean(clip)
    assert smooth is not None and smooth.shape == clip.clean.shape and smooth.dtype == np.uint8
    diff = smooth.astype(np.float64) - clip.clean.astype(np.float64)
    # the grain is zero-mean white noise of a few grey levels: nothing else moved
    assert abs(diff.mean()) < 1.0 and 1.0 < diff.std() < 12.0
    low_pass = np.stack([cv2.GaussianBlur(d, (0, 0), 3.0) for d in diff])  # a moved edge would be tens of levels
    assert np.abs(low_pass).mean() < 1.0 and np.abs(low_pass).max() < 8.0
    assert 0.8 < ssim(smooth, clip.clean) < 0.999
    # a clip that is not a default phantom has no grain-free frames (nor known degradation)
    renamed = VideoClip(clean=clip.clean, degraded=clip.degraded, masks=clip.masks, flow=clip.flow, fps=clip.fps,
                        name="real_clip")
    other_seed = VideoClip(clean=clip.clean, degraded=clip.degraded, masks=clip.masks, flow=clip.flow, fps=clip.fps,
                           name="seed_1")
    assert grain_free_clean(renamed) is None and grain_free_clean(other_seed) is None
    assert clip_degradation(renamed) is None and clip_degradation(clip) is not None


def test_clips_up_to_twelve_frames_keep_their_camera_path() -> None:
    """Generator version 2 changed long clips only: the data sets rendered before it stay
    valid. The last camera matrix of a 12-frame path, as version 1 computed it."""
    path = camera_path(np.random.default_rng(5), 12, 30.0, (384, 512), (240, 320))
    expected = [[1.14633312, 0.0917626683, -106.454212], [-0.0917626683, 1.14633312, -76.9862299]]
    np.testing.assert_allclose(path[-1, :2], expected, rtol=1e-8)


@pytest.mark.parametrize("seed", [3, 5, 8])
def test_long_clips_stay_inside_the_canvas(seed: int) -> None:
    """Seeds whose 90-frame camera path left the canvas before the roll was capped."""
    path = camera_path(np.random.default_rng(seed), 300, 30.0, (192, 256), (120, 160))
    angles = np.degrees(np.arctan2(path[:, 1, 0], path[:, 0, 0]))
    trend = np.polyfit(np.arange(300), angles, 1)[0] * 299
    assert abs(trend) <= 0.3 * ROLL_FRAMES + 0.1
    clip = render_clip(clip_seed(0, "test", seed), frames=90, height=64, width=80)
    assert clip.clean.shape == (90, 64, 80, 3) and clip.flow is not None and clip.flow.shape[0] == 89
