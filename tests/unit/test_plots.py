"""Evaluation figures: confusion matrix and reliability diagram."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_service.training.detection_metrics import reliability
from dicom_service.training.plots import render_confusion_matrix, render_reliability, save_png


def test_confusion_matrix_shades_by_rate_and_saves(tmp_path: Path) -> None:
    img = render_confusion_matrix(np.array([[9, 1], [0, 5]]), ["System A", "System B"], cell=40)
    assert img.dtype == np.uint8 and img.shape[2] == 3
    # the (0, 0) cell (rate 0.9) is darker in green than the (0, 1) cell (rate 0.1)
    top, left, cell = 60, 150, 40
    g00 = img[top + 30, left + 30, 1]
    g01 = img[top + 30, left + cell + 30, 1]
    assert g00 < g01
    path = save_png(img, tmp_path / "cm.png")
    assert cv2.imread(str(path)).shape == img.shape
    with pytest.raises(ValueError):
        render_confusion_matrix(np.zeros((2, 2)), ["only one"])


def test_reliability_diagram() -> None:
    rel = reliability(np.array([[0.9, 0.1]] * 10), np.array([0] * 9 + [1]))
    img = render_reliability(rel)
    assert img.shape == (440, 440, 3)
    assert (img[:, :, 2] == 200).any()  # bars drawn
