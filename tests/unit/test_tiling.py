"""Fitting radiographs of any size to the model input."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_service.vision.tiling import Window, plan_windows


def test_square_and_near_square_images_are_letterboxed() -> None:
    assert plan_windows((416, 416), 416) == [Window(0, 0, 416, 416)]
    (w,) = plan_windows((1000, 1300), 416)
    assert w.side == 1300 and w.scale == pytest.approx(416 / 1300)
    image = np.ones((1000, 1300), np.float32)
    crop = w.crop(image)
    assert crop.shape == (416, 416)
    assert crop[-1].max() == 0.0 and crop[0, 0] == pytest.approx(1.0)  # padded at the bottom


def test_panoramic_is_tiled_with_overlap_and_boxes_map_back() -> None:
    windows = plan_windows((1000, 2000), 416)
    assert [w.x0 for w in windows] == [0, 750, 1000] and all(w.side == 1000 for w in windows)
    covered = np.zeros(2000, bool)
    for w in windows:
        covered[w.x0:w.x0 + w.side] = True
    assert covered.all()
    box = windows[1].to_source(np.array([[41.6, 0, 83.2, 41.6]]))
    assert box[0].tolist() == pytest.approx([850, 0, 950, 100])
    tall = plan_windows((2000, 900), 416)
    assert all(w.x0 == 0 for w in tall) and tall[-1].y0 == 1100


def test_an_elongated_strip_takes_a_bounded_number_of_larger_windows() -> None:
    """A 5 x 65535 strip took 21,800 windows of 5 px (and all the machine's memory): now
    about MAX_WINDOWS windows, wider than the strip (zero-padded), covering it."""
    from dicom_service.vision.tiling import MAX_WINDOWS

    for shape in ((5, 65535), (65535, 5), (32, 3000)):
        windows = plan_windows(shape, 416)
        assert len(windows) <= MAX_WINDOWS + 1
        long_side = max(shape)
        starts = [max(w.x0, w.y0) for w in windows]
        assert starts[0] == 0 and starts[-1] + windows[-1].side == long_side
        assert all(b - a < w.side for a, b, w in zip(starts, starts[1:], windows, strict=False))  # no gaps
        crop = windows[3].crop(np.ones(shape, np.float32))
        assert crop.shape == (416, 416) and 0 < crop.mean() < 0.5  # mostly padding
    assert len(plan_windows((1000, 3000), 416)) == 4  # panoramics keep windows of their short side


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        plan_windows((0, 10), 416)
