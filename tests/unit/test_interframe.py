"""x2 super-resolution and x2 frame interpolation: shapes, the flow geometry, bundles,
and short training runs that beat their classical baselines."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicom_service.training.image_metrics import psnr  # noqa: E402
from dicom_service.training.train_interframe import (  # noqa: E402
    evaluate_interframe,
    linear_midpoint_error,
    train_interpolator,
    train_super_resolution,
)
from dicom_service.training.video_phantoms import render_clip  # noqa: E402
from dicom_service.vision.interframe import (  # noqa: E402
    FrameInterpolator2x,
    SuperResolution2x,
    interpolate_clip,
    load_interframe_bundle,
    middle_flows,
    save_interframe_bundle,
    upscale_clip,
)


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height // 6, width // 6, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def test_shapes_of_upscaling_and_interpolation() -> None:
    frames = np.stack([_texture(40, 56, s) for s in range(3)])
    up = upscale_clip(SuperResolution2x(8, 1).eval(), frames)
    assert up.shape == (3, 80, 112, 3) and up.dtype == np.uint8
    mid = interpolate_clip(FrameInterpolator2x(8).eval(), frames)
    assert mid.shape == (5, 40, 56, 3)
    assert np.array_equal(mid[0::2], frames)


def test_flow_warped_average_of_a_translation_is_the_half_way_frame() -> None:
    base = _texture(96, 128)
    first, second = base[:, 8:120], np.ascontiguousarray(base[:, 0:112])  # content moves +8 px in x
    truth = base[:, 4:116]
    mid = interpolate_clip(FrameInterpolator2x(8).eval(), np.stack([first, second]), refine=False)[1]
    inner = (slice(10, -10), slice(16, -16))
    assert psnr(mid[inner], truth[inner]) > 28.0
    fwd = torch.full((1, 2, 4, 4), 8.0)
    to_first, to_second = middle_flows(fwd, -fwd)
    assert torch.allclose(to_first, -0.5 * fwd) and torch.allclose(to_second, 0.5 * fwd)


def test_bundles_round_trip(tmp_path) -> None:
    for model in (SuperResolution2x(8, 2), FrameInterpolator2x(8)):
        save_interframe_bundle(model, tmp_path / type(model).__name__, {"command": "test"})
        loaded, config = load_interframe_bundle(tmp_path / type(model).__name__)
        assert type(loaded) is type(model) and config["command"] == "test"
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key])


def test_short_training_beats_the_classical_baselines() -> None:
    clips = [render_clip(seed, frames=5, height=96, width=96, teeth=True) for seed in (3, 4)]
    sr = train_super_resolution(clips, steps=150, batch_size=4, crop=24, width=16, blocks=2)
    interp = train_interpolator(clips, steps=60, batch_size=4, crop=48, width=8)
    report = evaluate_interframe(sr, interp, clips)
    assert report["sr2"]["psnr_model"] > report["sr2"]["psnr_bicubic"]
    assert set(report["sr2_to_1_5"]) == {"psnr_model", "psnr_bicubic"}  # x2 then area, as a 720p video gets it
    assert all(np.isfinite(v) for v in report["sr2_to_1_5"].values())
    assert report["interp2"]["psnr_flow_warped_average"] > report["interp2"]["psnr_frame_average"]
    assert np.isfinite(report["interp2"]["psnr_model"])
    stabilised = report["interp2"]["stabilised"]  # the same, on the clips stabilised first
    assert set(stabilised) == {"psnr_model", "psnr_flow_warped_average", "psnr_frame_average"}
    assert all(np.isfinite(v) for v in stabilised.values())
    assert report["interp2"]["linear_midpoint_error_px"] > 0  # the phantoms' camera shakes
    with pytest.raises(ValueError, match="no clip"):
        train_super_resolution(clips, steps=1, crop=64)


def test_linear_midpoint_error_is_zero_for_steady_motion_only() -> None:
    clip = render_clip(3, frames=4, height=64, width=80, instrument=False)
    steady = np.zeros((3, 64, 80, 2), np.float32)
    steady[..., 0] = 2.0
    assert linear_midpoint_error(dataclasses.replace(clip, flow=steady)) == pytest.approx(0.0, abs=1e-6)
    shaking = steady.copy()
    shaking[1, ..., 0] = -2.0  # right, left, right: the middle frame is 2 px off the linear guess
    assert linear_midpoint_error(dataclasses.replace(clip, flow=shaking)) == pytest.approx(2.0, abs=1e-4)
    assert linear_midpoint_error(dataclasses.replace(clip, flow=None)) is None
