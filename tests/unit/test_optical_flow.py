"""DIS flow recovers a known shift; end-point error arithmetic."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dicom_service.vision.optical_flow import DisFlow, clip_flows, endpoint_error


def _texture(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def test_dis_recovers_a_translation_at_full_and_reduced_resolution() -> None:
    image = _texture(240, 640)
    moved = np.roll(image, (3, 5), axis=(0, 1))  # content moves +5 px in x, +3 px in y
    for max_side in (640, 320):
        flow = DisFlow(max_side=max_side)(image, moved)
        assert flow.shape == (240, 640, 2) and flow.dtype == np.float32
        inner = flow[40:-40, 40:-40].reshape(-1, 2)
        assert np.median(inner[:, 0]) == pytest.approx(5.0, abs=0.5)
        assert np.median(inner[:, 1]) == pytest.approx(3.0, abs=0.5)


def test_clip_flows_to_the_previous_and_the_next_frame() -> None:
    image = _texture(96, 128)
    frames = np.stack([np.roll(image, (0, 2 * t), axis=(0, 1)) for t in range(3)])  # +2 px in x per frame
    backward, forward = clip_flows(frames, DisFlow()), clip_flows(frames, DisFlow(), step=1)
    assert backward[0] is None and forward[2] is None and len(backward) == len(forward) == 3
    for flows, sign in ((backward[1:], -1.0), (forward[:2], 1.0)):
        for flow in flows:
            assert np.median(flow[20:-20, 20:-20, 0]) == pytest.approx(2.0 * sign, abs=0.5)
    with pytest.raises(ValueError, match="step"):
        clip_flows(frames, DisFlow(), step=2)


def test_flow_needs_two_frames_of_one_size() -> None:
    with pytest.raises(ValueError, match="one size"):
        DisFlow()(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="max_side"):
        DisFlow(max_side=4)


def test_endpoint_error() -> None:
    true = np.zeros((4, 4, 2), np.float32)
    pred = true.copy()
    pred[..., 0] = 3.0
    pred[..., 1] = 4.0
    assert endpoint_error(pred, true) == pytest.approx(5.0)
    valid = np.zeros((4, 4), bool)
    assert np.isnan(endpoint_error(pred, true, valid))
    with pytest.raises(ValueError):
        endpoint_error(pred[:2], true)


def test_clip_flows_on_demand_match_the_list() -> None:
    """ClipFlows computes entry t when read; it equals clip_flows entry by entry and indexes like a list."""
    from dicom_service.vision.optical_flow import ClipFlows

    image = _texture(96, 128)
    frames = np.stack([np.roll(image, (t, 2 * t), axis=(0, 1)) for t in range(4)])
    for step in (-1, 1):
        lazy, eager = ClipFlows(frames, DisFlow(), step), clip_flows(frames, DisFlow(), step)
        assert len(lazy) == 4
        for t in range(4):
            assert (lazy[t] is None) == (eager[t] is None)
            if eager[t] is not None:
                assert np.array_equal(lazy[t], eager[t])
        assert [f is None for f in lazy[1:3]] == [f is None for f in eager[1:3]]
        assert (lazy[-1] is None) == (step == 1)
    with pytest.raises(IndexError):
        ClipFlows(frames, DisFlow())[4]
    with pytest.raises(ValueError, match="step"):
        ClipFlows(frames, DisFlow(), step=0)


def test_warp_residual_is_small_along_the_motion_and_large_at_a_cut() -> None:
    """Consecutive phantom frames follow from each other by their DIS flow (residual under
    the scene-cut threshold); the first frame of another scene does not."""
    from dicom_service.training.video_phantoms import clip_seed, render_clip
    from dicom_service.vision.mask_propagation import SCENE_CUT_RESIDUAL
    from dicom_service.vision.optical_flow import warp_residual

    dis = DisFlow()
    one = render_clip(clip_seed(0, "test", 3), frames=2, teeth=True).degraded
    other = render_clip(clip_seed(0, "test", 9), frames=2, teeth=True).degraded[0]
    assert warp_residual(one[0], one[0], np.zeros((*one.shape[1:3], 2), np.float32)) == 0.0
    along = warp_residual(one[1], one[0], dis(one[1], one[0]))
    across = warp_residual(other, one[1], dis(other, one[1]))
    assert 0.0 < along < SCENE_CUT_RESIDUAL < across
    with pytest.raises(ValueError, match="one size"):
        warp_residual(one[1], one[0][:-1], dis(one[1], one[0]))
