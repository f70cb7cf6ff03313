"""Synthetic periapical and panoramic radiographs: determinism, truth and image statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dicom_service.training.implant_systems import load_implant_systems
from dicom_service.training.radiograph_phantoms import render_panoramic, render_periapical
from dicom_service.training.radiograph_scene import RadiographScene

SEEDS = range(8)


@pytest.fixture(scope="module")
def scenes() -> list[RadiographScene]:
    return [render_periapical(s) for s in SEEDS]


def _full_mask(scene: RadiographScene, box, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(scene.image.shape, bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    out[y0:y1, x0:x1] = mask
    return out


def test_same_seed_same_scene() -> None:
    a, b = render_periapical(3), render_periapical(3)
    np.testing.assert_array_equal(a.image, b.image)
    assert [i.box for i in a.implants] == [i.box for i in b.implants]
    assert [i.system for i in a.implants] == [i.system for i in b.implants]
    assert not np.array_equal(a.image, render_periapical(4).image)


def test_periapical_format_and_counts(scenes: list[RadiographScene]) -> None:
    for scene in scenes:
        assert scene.image.shape == (416, 416) and scene.image.dtype == np.uint16
        assert int(scene.image.max()) <= 4095
        assert 0 <= len(scene.implants) <= 3
    assert any(len(s.implants) >= 2 for s in scenes) and any(s.implants for s in scenes)


def test_implants_are_the_brightest_objects(scenes: list[RadiographScene]) -> None:
    for scene in scenes:
        img = scene.image.astype(float)
        assert (img >= 4095).mean() < 0.05  # not blown out
        assert np.percentile(img, 50) > 300  # anatomy is visible, not black
        for imp in scene.implants:
            if imp.mask.sum() < 200:
                continue
            full = _full_mask(scene, imp.box, imp.mask)
            assert np.median(img[full]) > np.percentile(img, 90)


def test_parts_tile_the_implant_and_lie_in_its_box(scenes: list[RadiographScene]) -> None:
    for scene in scenes:
        for imp in scene.implants:
            x0, y0, x1, y1 = imp.box
            assert 0 <= x0 < x1 <= 416 and 0 <= y0 < y1 <= 416
            union = np.zeros(scene.image.shape, np.int32)
            for part in imp.parts:
                px0, py0, px1, py1 = part.box
                assert x0 <= px0 and y0 <= py0 and px1 <= x1 and py1 <= y1
                union += _full_mask(scene, part.box, part.mask)
            assert union.max() <= 1
            np.testing.assert_array_equal(union > 0, _full_mask(scene, imp.box, imp.mask))
            if len(imp.parts) == 3 and not imp.truncated:
                # stacked along the axis: coronal end first, apex last
                xa, ya, xb, yb = imp.axis
                axis = np.array([xb - xa, yb - ya]) / np.hypot(xb - xa, yb - ya)
                centres = [np.array([(p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2]) @ axis
                           for p in imp.parts]
                assert centres[0] < centres[1] < centres[2]
                assert [p.name for p in imp.parts] == ["coronal", "middle", "apical"]


def test_truncated_implants_are_clipped_and_flagged() -> None:
    found = 0
    for seed in range(14):
        scene = render_periapical(seed)
        rows, cols = scene.image.shape
        for imp in scene.implants:
            x0, y0, x1, y1 = imp.box
            touches = x0 <= 0 or y0 <= 0 or x1 >= cols or y1 >= rows
            assert touches == imp.truncated, (seed, imp.box)
            found += imp.truncated
    assert found >= 1


def test_implant_designs_belong_to_their_system(scenes: list[RadiographScene]) -> None:
    systems = {s.name: s for s in load_implant_systems()}
    for scene in scenes:
        for imp in scene.implants:
            system = systems[imp.system]
            assert imp.design == system.make(imp.design.length_mm, imp.design.diameter_mm)
            assert set(imp.attributes) >= {"platform", "body", "apex"}


def test_periapical_speed() -> None:
    render_periapical(100)
    start = time.perf_counter()
    for seed in (101, 102, 103):
        render_periapical(seed)
    assert (time.perf_counter() - start) / 3 < 1.0  # ~0.1 s on one core; lenient for busy CI


def test_native_and_panoramic_formats() -> None:
    native = render_periapical(5, size=(1000, 1300), implants=2)
    assert native.image.shape == (1000, 1300) and native.pixel_mm == pytest.approx(0.03)
    assert len(native.implants) <= 2
    pano = render_panoramic(7, size=(500, 1000), pixel_mm=0.2, implants=4)
    assert pano.image.shape == (500, 1000) and pano.image.dtype == np.uint16
    assert 1 <= len(pano.implants) <= 4
    with pytest.raises(ValueError, match="implants"):
        render_periapical(0, implants=5)
