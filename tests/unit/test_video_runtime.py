"""The learned video runtime with the bundled models: quality on a held-out phantom, and
the bad inputs of issue 3 (odd sizes, one frame, grayscale, 4K, no teeth)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from dicom_service.training.image_metrics import psnr  # noqa: E402
from dicom_service.training.video_phantoms import clip_seed, render_clip  # noqa: E402
from dicom_service.vision.registry import build_video_runtime, default_models_dir  # noqa: E402
from dicom_service.vision.runtime import VideoRuntime  # noqa: E402
from dicom_service.vision.video_runtime import LearnedVideoRuntime  # noqa: E402


@pytest.fixture(scope="module")
def runtime() -> LearnedVideoRuntime:
    return LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_registry_builds_the_learned_runtime() -> None:
    built = build_video_runtime("learned", "cpu")
    assert isinstance(built, VideoRuntime) and built.info.family == "ai"


def test_learned_noprior_restores_without_the_prior_and_still_segments() -> None:
    """``learned-noprior``: the bundle trained without the tooth prior restores; SAM still
    gives the tooth masks (the Segmentation output), and the provenance says which model ran."""
    built = build_video_runtime("learned-noprior", "cpu")
    assert isinstance(built, LearnedVideoRuntime) and built.restorer.config.use_prior is False
    clip = render_clip(clip_seed(0, "test", 1), frames=3, teeth=True)
    result = built.enhance(clip.degraded, clip.fps)
    assert psnr(result.frames, clip.clean) > psnr(clip.degraded, clip.clean) + 3.0
    assert _iou(result.tooth_masks, clip.masks) > 0.9
    assert result.algorithm.name == "motion-restoration-without-tooth-prior"
    assert any("without the tooth prior" in step for step in result.steps)


def test_restores_and_segments_a_held_out_phantom(runtime: LearnedVideoRuntime) -> None:
    clip = render_clip(clip_seed(0, "test", 1), frames=4, teeth=True)
    result = runtime.enhance(clip.degraded, clip.fps)
    assert result.frames.shape == clip.clean.shape and result.frames.dtype == np.uint8
    assert psnr(result.frames, clip.clean) > psnr(clip.degraded, clip.clean) + 3.0
    assert _iou(result.tooth_masks, clip.masks) > 0.9
    assert result.metrics["tooth_area_fraction"] > 0.05
    assert any("SAM" in step for step in result.steps)
    assert any("dual-branch" in step for step in result.steps)


def test_odd_frame_size_and_a_single_frame(runtime: LearnedVideoRuntime) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 77, 101, 3), dtype=np.uint8)
    result = runtime.enhance(frames, 25.0)
    assert result.frames.shape == frames.shape and result.tooth_masks.shape == (3, 77, 101)
    single = runtime.enhance(frames[:1], 1.0)
    assert single.frames.shape == (1, 77, 101, 3)
    assert single.metrics["shake_px_before"] == 0.0


def test_grayscale_video_replicated_to_rgb(runtime: LearnedVideoRuntime) -> None:
    clip = render_clip(clip_seed(0, "test", 2), frames=2, height=64, width=96)
    grey = clip.degraded.mean(axis=-1).astype(np.uint8)
    result = runtime.enhance(np.repeat(grey[..., None], 3, axis=-1), 30.0)
    assert result.frames.shape == (2, 64, 96, 3)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        runtime.enhance(grey, 30.0)


def test_4k_frames_are_processed_downscaled(runtime: LearnedVideoRuntime) -> None:
    """A 4K video comes back at 1920x1080 (the most H.264 Level 4.2 carries), its masks at
    3840x2160; a 4K still keeps its size (it becomes a Secondary Capture, which has no limit)."""
    clip = render_clip(clip_seed(0, "test", 3), frames=2, height=270, width=480)
    big = np.stack([np.kron(f, np.ones((8, 8, 1), np.uint8)) for f in clip.degraded])  # 2160 x 3840
    result = runtime.enhance(big, 30.0)
    assert result.frames.shape == (2, 1080, 1920, 3) and result.tooth_masks.shape == big.shape[:3]
    assert any("downscaled" in step and "scaled to 1920x1080" in step for step in result.steps)
    still = runtime.enhance(big[:1], 1.0)
    assert still.frames.shape == big[:1].shape and still.tooth_masks.shape == big[:1].shape[:3]


def test_x2_options_are_fitted_to_h264_level_42_with_a_step() -> None:
    """x2 super-resolution of a 1280x720 video would exceed what a DICOM H.264 video carries
    (1920x1080): the x2 result is brought down to 1920x1080; x2 interpolation of a 60 fps
    video would exceed 60 fps: skipped. The provenance says which."""
    built = build_video_runtime("learned-sr2-interp2", "cpu")
    frames = render_clip(clip_seed(0, "test", 6), frames=2, height=720, width=1280).degraded
    result = built.enhance(frames, 60.0)
    assert result.frames.shape == (2, 1080, 1920, 3) and result.fps == 60.0
    assert result.tooth_masks.shape == frames.shape[:3]
    assert any(step.startswith("Resolution raised to 1920x1080: learned x2 super-resolution") for step in result.steps)
    assert any("interpolation not applied: 120 fps" in step for step in result.steps)
    assert not any("doubled" in step for step in result.steps)
    # the fitted frames are the x2 result of the restored frames, area-downscaled
    from dicom_service.vision.interframe import upscale_frame

    plain = build_video_runtime("learned", "cpu").enhance(frames, 60.0).frames
    for fitted, restored in zip(result.frames, plain, strict=True):
        doubled = upscale_frame(built.upscaler, restored)
        assert np.array_equal(fitted, cv2.resize(doubled, (1920, 1080), interpolation=cv2.INTER_AREA))
    small = built.enhance(frames[:, :64, :96].copy(), 30.0)  # both apply in full where they fit
    assert small.frames.shape == (3, 128, 192, 3) and small.fps == 60.0
    assert "Resolution doubled: learned x2 super-resolution" in small.steps


@pytest.mark.parametrize(("count", "scaled", "size", "expected"), [
    (2, False, (64, 96), (128, 192)),  # fits: doubled
    (2, False, (720, 1280), (1080, 1920)),  # a 720p video: x1.5
    (2, False, (1280, 720), (1920, 1080)),  # portrait
    (2, False, (600, 800), (1080, 1440)),  # 4:3 within 1920x1080
    (1, False, (720, 1280), (1440, 2560)),  # a still has no limit
    (2, False, (1080, 1920), None),  # already the most H.264 Level 4.2 carries
    (2, True, (720, 1280), None),  # processed downscaled
])
def test_super_resolution_size(count: int, scaled: bool, size: tuple[int, int],
                               expected: tuple[int, int] | None) -> None:
    from dicom_service.vision.video_runtime import _super_resolution_size

    fitted, why = _super_resolution_size(count, scaled, *size)
    assert fitted == expected
    assert (why == "") == (expected is not None)
    if expected is None:
        assert why.startswith("x2 super-resolution not applied: ")


def test_a_clip_without_teeth_gets_empty_masks(runtime: LearnedVideoRuntime) -> None:
    clip = render_clip(clip_seed(0, "test", 4), frames=3, teeth=False)
    result = runtime.enhance(clip.degraded, clip.fps)
    assert result.tooth_masks.mean() < 0.01
    assert result.frames.shape == clip.clean.shape


def test_tooth_model_on_keyframes_carries_masks_by_flow(runtime: LearnedVideoRuntime) -> None:
    """``segment_every=3``: frames 0 and 3 get the tooth model's own masks (those of the
    runtime segmenting every frame), frames 1, 2 and 4 the previous mask warped by the DIS
    flow to the previous frame, the same masks :func:`keyframe_masks` gives for the clip in
    memory; the provenance says so, and the masks still fit the teeth."""
    from dicom_service.vision.mask_propagation import keyframe_masks, warp_to_next
    from dicom_service.vision.optical_flow import DisFlow

    clip = render_clip(clip_seed(0, "test", 2), frames=5, teeth=True)
    every_frame = runtime.enhance(clip.degraded, clip.fps).tooth_masks
    sparse = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False, segment_every=3)
    result = sparse.enhance(clip.degraded, clip.fps)
    masks = result.tooth_masks
    assert np.array_equal(masks[0], every_frame[0]) and np.array_equal(masks[3], every_frame[3])
    dis = DisFlow()
    for t in (1, 2, 4):
        assert np.array_equal(masks[t], warp_to_next(masks[t - 1], dis(clip.degraded[t], clip.degraded[t - 1])))
    assert not np.array_equal(masks[1], masks[0])  # the camera moved: the mask moved with it
    assert np.array_equal(keyframe_masks(sparse.segmenter, clip.degraded, 3), masks)
    assert _iou(masks, clip.masks) > 0.9
    assert any("one frame in 3 and on scene cuts, masks carried" in step for step in result.steps)
    assert "segment_every=3" in result.algorithm.parameters
    with pytest.raises(ValueError, match="segment_every"):
        LearnedVideoRuntime(default_models_dir(), "cpu", segment_every=0)
    from dicom_service.domain import ConfigError
    with pytest.raises(ConfigError, match="segment_every"):
        build_video_runtime("learned", "cpu", segment_every=0)


def test_a_scene_cut_is_segmented_afresh_between_keyframes(runtime: LearnedVideoRuntime) -> None:
    """``segment_every=4`` on two scenes joined at frame 2: frame 1 gets the warped mask, but
    frame 2 (the cut, which the flow does not explain) is segmented by the tooth model, not
    given the other scene's mask; frame 3 follows from it by the flow again."""
    from dicom_service.vision.mask_propagation import keyframe_masks, warp_to_next
    from dicom_service.vision.optical_flow import DisFlow

    first = render_clip(clip_seed(0, "test", 3), frames=2, teeth=True).degraded
    second = render_clip(clip_seed(0, "test", 9), frames=2, teeth=True).degraded
    frames = np.concatenate([first, second])
    every_frame = runtime.enhance(frames, 30.0).tooth_masks
    sparse = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False, segment_every=4)
    masks = sparse.enhance(frames, 30.0).tooth_masks
    dis = DisFlow()
    assert np.array_equal(masks[1], warp_to_next(masks[0], dis(frames[1], frames[0])))
    assert np.array_equal(masks[2], every_frame[2])
    assert np.array_equal(masks[3], warp_to_next(masks[2], dis(frames[3], frames[2])))
    assert np.array_equal(keyframe_masks(sparse.segmenter, frames, 4), masks)


def test_bad_arguments_are_errors(runtime: LearnedVideoRuntime) -> None:
    with pytest.raises(ValueError, match="16x16"):
        runtime.enhance(np.zeros((1, 8, 8, 3), np.uint8), 30.0)
    with pytest.raises(ValueError, match="fps"):
        runtime.enhance(np.zeros((1, 32, 32, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="uint8"):
        runtime.enhance(np.zeros((1, 32, 32, 3), np.float32), 30.0)


def test_stabilisation_reduces_shake() -> None:
    clip = render_clip(clip_seed(0, "test", 5), frames=12, teeth=True)
    result = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=True).enhance(clip.degraded, clip.fps)
    assert result.metrics["shake_px_after"] < result.metrics["shake_px_before"]


def test_sr2_and_interp2_options_through_the_pipeline(tmp_path) -> None:
    """``learned-sr2-interp2``: twice the frame rate and twice the size, written as a valid
    Video Photographic object whose SEG still covers the source frames."""
    import pydicom

    from dicom_service.pipelines.video import process_video_instance
    from tests import builders
    from tests.dicomcheck import run_dciodvfy

    runtime = build_video_runtime("learned-sr2-interp2", "cpu")
    source = builders.make_video_photographic(frames=4, rows=64, cols=96)
    objects, summary = process_video_instance(source, runtime, uid_seed="sr-interp")
    video = next(o.dataset for o in objects if o.kind == "video")
    path = builders.save(video, tmp_path / "video.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (128, 192, 7)
    assert float(back.FrameTime) == pytest.approx(1000.0 / 60.0, abs=1e-2)
    assert any("Frame rate doubled" in s for s in summary["steps"])
    seg = next(o.dataset for o in objects if o.kind == "seg")
    assert (seg.Rows, seg.Columns) == (64, 96)


@pytest.mark.parametrize(("name", "said"), [("learned", "3840x2160 video's result scaled to 1920x1080"),
                                            ("baseline", "Downscaled from 3840x2160 to 1920x1080")])
def test_4k_video_through_the_workflow_is_written_at_1080p(tmp_path, name: str, said: str) -> None:
    """A native 4K Video Photographic clip: the enhanced video written at 1920x1080 (the most
    a DICOM H.264 video carries, said in its provenance and the SR), the Segmentation at the
    source's 3840x2160. The learned runtime restores downscaled and returns 1920x1080 frames;
    the classical one works at 4K and the workflow downscales before encoding."""
    import pydicom

    from dicom_service.pipelines.video import process_video_instance
    from tests import builders
    from tests.dicomcheck import run_dciodvfy

    source = builders.make_native_video_photographic(frames=2, rows=2160, cols=3840)
    objects, summary = process_video_instance(source, build_video_runtime(name, "cpu"), uid_seed="4k")
    by_kind = {o.kind: o.dataset for o in objects}
    assert sorted(by_kind) == ["seg", "sr", "video"]
    path = builders.save(by_kind["video"], tmp_path / "video.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (1080, 1920, 2)
    assert said in str(back.DerivationDescription)
    assert any("H.264 Level 4.2" in step for step in summary["steps"])
    assert (by_kind["seg"].Rows, by_kind["seg"].Columns) == (2160, 3840)


def test_hevc_video_larger_than_1080p_is_decoded_and_written_as_h264(tmp_path) -> None:
    """How a 4K-class camera clip arrives in DICOM: HEVC/H.265 Main Profile (.107) at 2560x1440.
    It is decoded with PyAV, restored downscaled, and written back as H.264 at 1920x1080."""
    import pydicom

    from dicom_service.pipelines.video import process_video_instance
    from tests import builders
    from tests.dicomcheck import run_dciodvfy

    native = builders.make_native_video_photographic(frames=3, rows=1440, cols=2560)
    frames = np.frombuffer(native.PixelData, np.uint8).reshape(3, 1440, 2560, 3)
    source = builders.make_hevc_video_photographic(frames, count=3, rows=1440, cols=2560)
    objects, summary = process_video_instance(source, build_video_runtime("learned", "cpu"), uid_seed="hevc")
    assert summary["frames"] == 3 and (summary["width"], summary["height"]) == (2560, 1440)
    video_ds = next(o.dataset for o in objects if o.kind == "video")
    path = builders.save(video_ds, tmp_path / "video.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert str(back.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.102"
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (1080, 1920, 3)
