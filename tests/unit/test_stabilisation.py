"""Camera motion for stabilisation: DIS similarity refined by ECC, against known motions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from dicom_service.training.evaluate_stabilisation import true_motion, true_pair_matrices
from dicom_service.training.video_phantoms import clip_seed, render_clip
from dicom_service.vision.stabilisation import estimate_motion, fit_similarity, matrix_motion, refine_similarity


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float], width: int, height: int) -> np.ndarray:
    """``(2, 3)`` rotation and zoom about the frame centre, then ``shift`` (x, y)."""
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    a = math.radians(angle_deg)
    linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([linear, (centre - linear @ centre + np.array(shift))[:, None]])


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A grey phantom frame ``(240, 320)`` uint8 (teeth, gingiva and mucosa texture)."""
    clip = render_clip(clip_seed(0, "val", 3), frames=2, teeth=True, instrument=False)
    return cv2.cvtColor(clip.clean[0], cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize("index", [1, 4])
def test_ecc_refinement_beats_the_dis_fit_on_degraded_frames(index: int) -> None:
    """Blur, noise and JPEG: the DIS fit alone is off by 0.15-0.2 px per pair on these
    clips, the refinement by a third of that."""
    clip = render_clip(clip_seed(0, "val", index), frames=12)
    assert clip.flow is not None
    height, width = clip.clean.shape[1:3]
    truth = true_motion(true_pair_matrices(clip.flow), width, height)
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip.degraded]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    fitted_errors, refined_errors = [], []
    for t in range(1, len(grey)):
        flow = dis.calc(grey[t - 1], grey[t], None)
        fitted = fit_similarity(flow)
        assert fitted is not None
        refined = refine_similarity(grey[t - 1], grey[t], fitted, flow)
        fitted_errors.append(np.subtract(matrix_motion(fitted, width, height)[:2], truth[t, :2]))
        refined_errors.append(np.subtract(matrix_motion(refined, width, height)[:2], truth[t, :2]))
    fitted_rms = float(np.sqrt(np.mean(np.sum(np.square(fitted_errors), axis=1))))
    refined_rms = float(np.sqrt(np.mean(np.sum(np.square(refined_errors), axis=1))))
    assert refined_rms < 0.1 and refined_rms < 0.6 * fitted_rms


def test_ecc_refinement_keeps_the_zoom_of_a_known_similarity(scene: np.ndarray) -> None:
    height, width = scene.shape
    truth = _similarity(0.6, 1.012, (1.37, -0.83), width, height)
    moved = cv2.warpAffine(scene, truth, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST).calc(scene, moved, None)
    fitted = fit_similarity(flow)
    assert fitted is not None
    refined = refine_similarity(scene, moved, fitted, flow)
    want, got = matrix_motion(truth, width, height), matrix_motion(refined, width, height)
    assert float(np.hypot(want[0] - got[0], want[1] - got[1])) < 0.1
    assert abs(math.degrees(got[2] - want[2])) < 0.03
    assert math.sqrt(abs(np.linalg.det(refined[:, :2]))) == pytest.approx(1.012, abs=0.003)


def test_refinement_falls_back_to_the_dis_fit(scene: np.ndarray) -> None:
    height, width = scene.shape
    start = _similarity(0.0, 1.0, (2.0, 1.0), width, height)
    flat = np.full_like(scene, 128)
    zero_flow = np.zeros((height, width, 2), np.float32)
    # flat frames: nothing to align
    np.testing.assert_array_equal(refine_similarity(flat, flat, start, np.tile([2.0, 1.0], (height, width, 1))),
                                  start)
    # no pixel moves as the fit says (the flow disagrees everywhere): the fit is kept
    np.testing.assert_array_equal(refine_similarity(scene, scene, start, zero_flow), start)
    # a start 6 px from the true motion: ECC may find the truth, but never moves the
    # frame centre more than 2 px from the DIS fit
    moved = cv2.warpAffine(scene, _similarity(0.0, 1.0, (-4.0, 1.0), width, height), (width, height),
                           borderMode=cv2.BORDER_REFLECT)
    refined = refine_similarity(scene, moved, start, np.tile(np.float32([2.0, 1.0]), (height, width, 1)))
    offset = np.subtract(matrix_motion(refined, width, height)[:2], matrix_motion(start, width, height)[:2])
    assert float(np.hypot(*offset)) <= 2.0


def test_motion_of_a_phantom_clip_is_within_a_tenth_of_a_pixel() -> None:
    clip = render_clip(clip_seed(0, "val", 5), frames=12)
    assert clip.flow is not None
    height, width = clip.clean.shape[1:3]
    truth = true_motion(true_pair_matrices(clip.flow), width, height)
    for frames, bound in ((clip.clean, 0.1), (clip.degraded, 0.3)):
        estimated = estimate_motion(frames)
        error = float(np.sqrt(np.mean(np.sum((estimated[1:, :2] - truth[1:, :2]) ** 2, axis=1))))
        assert error < bound
