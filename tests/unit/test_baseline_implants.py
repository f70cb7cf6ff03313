"""Classical implant detector: recall on phantoms, no false positives, speed."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from dicom_service.media.pixels import load_radiograph
from dicom_service.vision.baseline_implants import ElongatedObjectDetector
from dicom_service.vision.runtime import RadiographRuntime
from tests import builders

Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_matches(found: list[Box], truth: list[Box]) -> None:
    assert len(found) == len(truth), (found, truth)
    for box in truth:
        assert max(iou(box, f) for f in found) >= 0.5, (box, found)


@pytest.fixture(scope="module")
def detector() -> ElongatedObjectDetector:
    return ElongatedObjectDetector()


def test_protocol_and_info(detector: ElongatedObjectDetector) -> None:
    assert isinstance(detector, RadiographRuntime)
    assert detector.info.name == "classical-radiopaque-elongated-baseline"
    assert detector.info.family == "baseline"


@pytest.mark.parametrize("implants", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("photometric,for_processing", [
    ("MONOCHROME2", False), ("MONOCHROME1", False), ("MONOCHROME2", True)])
def test_finds_intraoral_implants(detector, implants, seed, photometric, for_processing) -> None:
    ds, truth = builders.make_intraoral_radiograph_with_truth(
        implants=implants, seed=seed, photometric=photometric, for_processing=for_processing)
    result = detector.detect(load_radiograph(ds))
    assert result.image_shape == (ds.Rows, ds.Columns)
    assert_matches([f.box for f in result.findings], truth)
    for finding in result.findings:
        assert 0.0 <= finding.score <= 1.0
        x0, y0, x1, y1 = finding.box
        xa, ya, xb, yb = finding.axis
        assert x0 - 2 <= min(xa, xb) and max(xa, xb) <= x1 + 2
        assert y0 - 2 <= min(ya, yb) and max(ya, yb) <= y1 + 2
        assert np.hypot(xb - xa, yb - ya) > 0.7 * max(x1 - x0, y1 - y0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_finds_panoramic_implants(detector, seed) -> None:
    ds, truth = builders.make_panoramic_dx_with_truth(implants=3, seed=seed)
    assert_matches([f.box for f in detector.detect(load_radiograph(ds)).findings], truth)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_findings_without_implants(detector, seed) -> None:
    for ds in (builders.make_intraoral_radiograph(implants=0, seed=seed),
               builders.make_intraoral_radiograph(implants=0, seed=seed, for_processing=True),
               builders.make_intraoral_radiograph(implants=0, seed=seed, photometric="MONOCHROME1"),
               builders.make_panoramic_dx(implants=0, seed=seed, rows=500, cols=1000)):
        assert detector.detect(load_radiograph(ds)).findings == []


def test_blank_and_constant_images(detector) -> None:
    assert detector.detect(np.zeros((64, 64), np.float32)).findings == []
    assert detector.detect(np.ones((64, 64), np.float32)).findings == []


def test_large_images_are_fast_and_boxes_map_back(detector) -> None:
    ds, truth = builders.make_panoramic_dx_with_truth(implants=3, seed=5)
    image = load_radiograph(ds)
    detector.detect(image)  # warm-up
    started = time.perf_counter()
    result = detector.detect(image)
    assert time.perf_counter() - started < 1.0
    assert_matches([f.box for f in result.findings], truth)
    huge = cv2.resize(image, (6000, 3000), interpolation=cv2.INTER_LINEAR)
    started = time.perf_counter()
    result = detector.detect(huge)
    assert time.perf_counter() - started < 2.0
    assert result.image_shape == (3000, 6000)
    assert_matches([f.box for f in result.findings], [tuple(3 * v for v in box) for box in truth])


def test_invalid_input_and_parameters(detector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        detector.detect(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(ValueError):
        ElongatedObjectDetector(min_aspect=0.5)
    with pytest.raises(ValueError):
        ElongatedObjectDetector(min_area_fraction=0.5, max_area_fraction=0.1)
