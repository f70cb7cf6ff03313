"""Small evaluation figures drawn with OpenCV (no plotting library needed).

Both functions return ``(H, W, 3)`` uint8 RGB images; :func:`save_png` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from dicom_service.training.detection_metrics import Reliability

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45,
          colour: tuple[int, int, int] = _BLACK) -> None:
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def render_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], *, cell: int = 48,
                            title: str = "confusion matrix (rows: true, columns: predicted)") -> np.ndarray:
    """Draw a confusion matrix with counts; rows are true classes, columns predictions.

    Parameters
    ----------
    matrix : np.ndarray
        ``(C, C)`` non-negative counts.
    class_names : sequence of str
        ``C`` names (shortened to fit).

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB; cell darkness is the row-normalised rate.
    """
    matrix = np.asarray(matrix)
    classes = len(class_names)
    if matrix.shape != (classes, classes):
        raise ValueError(f"matrix shape {matrix.shape} does not match {classes} class names")
    left, top = 150, 60
    img = np.full((top + classes * cell + 20, left + classes * cell + 20, 3), 255, np.uint8)
    _text(img, title, (10, 22), 0.5)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for i in range(classes):
        _text(img, class_names[i][:18], (8, top + i * cell + cell // 2 + 5))
        _text(img, str(i), (left + i * cell + cell // 2 - 5, top - 8))
        for j in range(classes):
            shade = int(255 * (1.0 - rates[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (shade, shade, 255), -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (200, 200, 200), 1)
            colour = _WHITE if rates[i, j] > 0.6 else _BLACK
            _text(img, str(int(matrix[i, j])), (x0 + 6, y0 + cell // 2 + 5), 0.4, colour)
    return img


def render_reliability(rel: Reliability, *, size: int = 360, title: str = "reliability") -> np.ndarray:
    """Draw a reliability diagram: accuracy per confidence bin against the diagonal.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB; bars are accuracy per bin, the line is perfect
        calibration, the title carries the ECE.
    """
    margin = 40
    img = np.full((size + 2 * margin, size + 2 * margin, 3), 255, np.uint8)
    x0, y0, x1, y1 = margin, margin, margin + size, margin + size
    bins = len(rel.count)
    width = size / bins
    for b in range(bins):
        if rel.count[b] == 0 or np.isnan(rel.accuracy[b]):
            continue
        top = int(y1 - rel.accuracy[b] * size)
        cv2.rectangle(img, (int(x0 + b * width) + 1, top), (int(x0 + (b + 1) * width) - 1, y1),
                      (70, 110, 200), -1)
    cv2.rectangle(img, (x0, y0), (x1, y1), _BLACK, 1)
    cv2.line(img, (x0, y1), (x1, y0), (200, 60, 60), 1, cv2.LINE_AA)
    _text(img, f"{title}  ECE {rel.ece:.3f}", (x0, y0 - 12), 0.5)
    _text(img, "confidence", (x1 - 90, y1 + 25))
    _text(img, "accuracy", (4, y0 + 12), 0.4)
    return img


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write an RGB image as PNG; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
