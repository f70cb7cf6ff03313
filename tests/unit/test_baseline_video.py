"""Classical video baseline: stabilisation, denoising, tooth masks, edge cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dicom_service.vision.baseline_video import ClassicalVideoRuntime, tooth_mask
from dicom_service.vision.runtime import CollectingSink, VideoRuntime
from dicom_service.vision.stabilisation import estimate_motion, shake_px, smoothing_radius, stabilise
from tests import builders


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    return builders.make_intraoral_scene(frames=30, rows=240, cols=320, seed=11)


def test_enhance_contract_and_metrics(clip) -> None:
    frames, truth = clip
    runtime = ClassicalVideoRuntime()
    assert isinstance(runtime, VideoRuntime)
    assert runtime.info.family == "baseline"
    assert runtime.info.name == "classical-opencv-video-baseline"
    result = runtime.enhance(frames, 30.0)
    assert result.frames.shape == frames.shape and result.frames.dtype == np.uint8
    assert result.tooth_masks.shape == frames.shape[:3] and result.tooth_masks.dtype == bool
    assert result.fps == 30.0 and result.algorithm == runtime.info
    assert any("stabilisation" in step for step in result.steps)
    assert iou(result.tooth_masks, truth) > 0.9
    assert result.metrics["tooth_area_fraction"] == pytest.approx(truth.mean(), abs=0.05)
    assert result.metrics["shake_px_before"] > 1.0
    assert result.metrics["shake_px_after"] < 0.5 * result.metrics["shake_px_before"]


def _whole_clip(runtime: ClassicalVideoRuntime, frames: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The baseline's steps over whole arrays, as it once ran them."""
    count = len(frames)
    radius = smoothing_radius(fps, count, runtime.smoothing_seconds)
    masks = np.stack([tooth_mask(frame) for frame in frames])
    motion = estimate_motion(frames)
    work = stabilise(frames, motion, radius) if runtime.stabilise else frames
    denoised = [runtime._spatial(frame) for frame in work]
    out = np.stack([
        runtime._enhance_frame(runtime._temporal_blend(denoised[t - 1] if t else None, denoised[t],
                                                       denoised[t + 1] if t + 1 < count else None))
        for t in range(count)
    ])
    metrics = {"shake_px_before": shake_px(motion, radius), "shake_px_after": shake_px(estimate_motion(out), radius),
               "tooth_area_fraction": float(masks.mean())}
    return out, masks, metrics


@pytest.mark.parametrize("stabilised", [True, False])
def test_streamed_baseline_equals_whole_clip_processing_and_holds_a_window(clip, stabilised: bool) -> None:
    """30 frames at 30 fps (camera-path radius 14, half the clip): each frame leaves the
    runtime once the path ``radius`` frames ahead and its next denoised neighbour are known,
    never later, and the frames, masks and shake figures are those of the whole clip."""
    frames, _ = clip
    runtime = ClassicalVideoRuntime(stabilise=stabilised)
    expected, masks, metrics = _whole_clip(runtime, frames, 30.0)
    consumed = 0
    lags: list[int] = []

    def source():
        nonlocal consumed
        for frame in frames:
            consumed += 1
            yield frame

    class Recording(CollectingSink):
        def frame(self, frame: np.ndarray) -> None:
            lags.append(consumed - len(self.frames))
            super().frame(frame)

    sink = Recording()
    outcome = runtime.enhance_stream(source(), len(frames), 30.0, sink)
    assert np.array_equal(np.stack(sink.frames), expected)
    assert np.array_equal(np.stack(sink.masks), masks)
    assert outcome.metrics["shake_px_before"] == metrics["shake_px_before"]
    assert outcome.metrics["shake_px_after"] == metrics["shake_px_after"]
    assert outcome.metrics["tooth_area_fraction"] == metrics["tooth_area_fraction"]
    radius = smoothing_radius(30.0, len(frames), runtime.smoothing_seconds)
    assert radius == 14
    window = (radius if stabilised else 0) + 2
    assert max(lags) == window and lags[0] == window


def test_stream_rejects_a_bad_or_short_clip(clip) -> None:
    frames, _ = clip
    runtime = ClassicalVideoRuntime()
    with pytest.raises(ValueError, match="ended after 3 of the 5"):
        runtime.enhance_stream(iter(frames[:3]), 5, 30.0, CollectingSink())
    with pytest.raises(ValueError, match="fps"):
        runtime.enhance_stream(iter(frames[:3]), 3, 0.0, CollectingSink())
    with pytest.raises(ValueError, match="uint8"):
        runtime.enhance_stream(iter(frames[:3].astype(np.float32)), 3, 30.0, CollectingSink())


def test_stabilisation_switch(clip) -> None:
    frames, _ = clip
    result = ClassicalVideoRuntime(stabilise=False).enhance(frames[:10], 30.0)
    assert not any("stabilisation" in step for step in result.steps)
    assert result.metrics["shake_px_after"] > 0.5 * result.metrics["shake_px_before"]


def test_motion_estimate_recovers_a_known_shift(clip) -> None:
    frame = clip[0][0]
    shifted = cv2.warpAffine(frame, np.float32([[1, 0, 3.0], [0, 1, -2.0]]), (320, 240),
                             borderMode=cv2.BORDER_REFLECT)
    motion = estimate_motion(np.stack([frame, shifted]))
    assert motion[1, 0] == pytest.approx(3.0, abs=0.5)
    assert motion[1, 1] == pytest.approx(-2.0, abs=0.5)
    assert abs(motion[1, 2]) < 0.01


def test_denoising_reduces_noise_on_a_static_clip(clip) -> None:
    clean = cv2.GaussianBlur(clip[0][0], (0, 0), 1.0)
    rng = np.random.default_rng(0)
    noisy = np.stack([np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
                      for _ in range(5)])
    plain = ClassicalVideoRuntime(clahe_clip=0, unsharp_amount=0)
    out = plain.enhance(noisy, 25.0).frames

    def rmse(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a[:, 8:-8, 8:-8].astype(float) - clean[8:-8, 8:-8]) ** 2)))

    assert rmse(out) < 0.7 * rmse(noisy)


def test_single_still_frame(clip) -> None:
    result = ClassicalVideoRuntime().enhance(clip[0][:1], 1.0)
    assert result.frames.shape == (1, 240, 320, 3)
    assert result.metrics["shake_px_before"] == 0.0 == result.metrics["shake_px_after"]
    assert not any("stabilisation" in step or "temporal" in step for step in result.steps)


def test_grayscale_replicated_and_odd_sizes() -> None:
    frames, _ = builders.make_intraoral_scene(frames=4, rows=101, cols=135, seed=3)
    grey = np.repeat(cv2.cvtColor(frames.reshape(-1, 135, 3), cv2.COLOR_RGB2GRAY).reshape(4, 101, 135, 1), 3, axis=3)
    result = ClassicalVideoRuntime().enhance(grey, 30.0)
    assert result.frames.shape == (4, 101, 135, 3)
    assert np.abs(result.frames[..., 0].astype(int) - result.frames[..., 2]).max() <= 2
    assert result.tooth_masks.shape == (4, 101, 135)


def test_tooth_mask_ignores_gingiva_only_frames() -> None:
    gum = np.zeros((120, 160, 3), np.uint8)
    gum[:] = (205, 105, 115)
    assert not tooth_mask(gum).any()


def test_invalid_input_is_rejected() -> None:
    runtime = ClassicalVideoRuntime()
    with pytest.raises(ValueError):
        runtime.enhance(np.zeros((2, 32, 32), np.uint8), 30.0)
    with pytest.raises(ValueError):
        runtime.enhance(np.zeros((2, 32, 32, 3), np.float32), 30.0)
    with pytest.raises(ValueError):
        runtime.enhance(np.zeros((2, 32, 32, 3), np.uint8), 0.0)
    with pytest.raises(ValueError):
        ClassicalVideoRuntime(smoothing_seconds=0)
