"""Fit radiographs of any size to a fixed-size model input: letterbox or tiles.

A window is a square region of the source image, ``(x0, y0, side)`` in source pixels
(x = column, y = row), which is scaled to ``size × size`` model pixels; parts of the
window outside the image are padded with zeros (black).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Window:
    """A square source region and its scale to the model input.

    ``scale = size / side``: model pixel = (source pixel - origin) × scale.
    """

    x0: int
    y0: int
    side: int
    size: int

    @property
    def scale(self) -> float:
        """Model pixels per source pixel."""
        return self.size / self.side

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The window of ``image (rows, cols)`` resized to ``(size, size)``, zero-padded outside."""
        rows, cols = image.shape[:2]
        canvas = np.zeros((self.side, self.side), dtype=image.dtype)
        y1, x1 = min(rows, self.y0 + self.side), min(cols, self.x0 + self.side)
        canvas[: y1 - self.y0, : x1 - self.x0] = image[self.y0:y1, self.x0:x1]
        interpolation = cv2.INTER_AREA if self.side > self.size else cv2.INTER_LINEAR
        return cv2.resize(canvas, (self.size, self.size), interpolation=interpolation)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Model-pixel boxes ``(N, 4)`` xyxy → source-pixel boxes."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / self.scale
        return boxes + np.array([self.x0, self.y0, self.x0, self.y0], dtype=np.float64)


#: About the most windows :func:`plan_windows` tiles an image into (one more where the
#: last window is aligned to the end; a panoramic of 3:1 takes 4).
MAX_WINDOWS = 16


def plan_windows(shape: tuple[int, int], size: int, *, max_aspect: float = 1.5,
                 overlap: float = 0.25) -> list[Window]:
    """Windows covering an image of ``shape = (rows, cols)``.

    Images whose aspect ratio is at most ``max_aspect`` are letterboxed (one window of
    the long side). Wider or taller images (panoramic) are tiled with square windows of
    the short side, overlapping by ``overlap``, so objects keep their apparent size; an
    image so elongated that this would take more than :data:`MAX_WINDOWS` windows gets
    larger ones (reaching past the short side, zero-padded), so the work stays bounded
    (a 5 x 65535 image took 21,800 windows, and the memory of the machine).
    """
    rows, cols = shape
    if rows < 1 or cols < 1 or size < 1:
        raise ValueError(f"bad image shape {shape} or model size {size}")
    long_side, short_side = max(rows, cols), min(rows, cols)
    if long_side <= max_aspect * short_side:
        return [Window(0, 0, long_side, size)]
    # the side that covers the long side in MAX_WINDOWS overlapping windows
    side = max(short_side, math.ceil(long_side / (1.0 + (1.0 - overlap) * (MAX_WINDOWS - 1))))
    step = max(1, int(side * (1.0 - overlap)))
    starts = list(range(0, long_side - side + 1, step))
    if starts[-1] != long_side - side:
        starts.append(long_side - side)
    if cols >= rows:
        return [Window(s, 0, side, size) for s in starts]
    return [Window(0, s, side, size) for s in starts]
