"""A clip streamed through the learned runtime and the workflow gives, bit for bit, what
the whole-clip processing gives: the restoration, stabilisation, interpolation and
super-resolution composed over whole arrays here, as the runtime once ran them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread

pytest.importorskip("torch")
pytest.importorskip("segment_anything")


from dicom_service.domain import MediaError  # noqa: E402
from dicom_service.media.video import encapsulated_bitstream, open_frames, read_frames  # noqa: E402
from dicom_service.media.video_encode import encode_h264_mp4  # noqa: E402
from dicom_service.pipelines.video import process_video_instance  # noqa: E402
from dicom_service.training.video_phantoms import clip_seed, render_clip  # noqa: E402
from dicom_service.vision.interframe import interpolate_clip, upscale_clip  # noqa: E402
from dicom_service.vision.optical_flow import DisFlow, clip_flows  # noqa: E402
from dicom_service.vision.registry import default_models_dir  # noqa: E402
from dicom_service.vision.restoration_model import restore_clip  # noqa: E402
from dicom_service.vision.runtime import CollectingSink, checked_frames  # noqa: E402
from dicom_service.vision.stabilisation import (  # noqa: E402
    StreamStabiliser,
    estimate_motion,
    moving_average,
    shake_px,
    smoothed_row,
    smoothing_radius,
    stabilise,
)
from dicom_service.vision.video_runtime import LearnedVideoRuntime, automatic_masks  # noqa: E402
from dicom_service.writers.seg import _pack_masks  # noqa: E402
from tests import builders  # noqa: E402


def _whole_clip(runtime: LearnedVideoRuntime, frames: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The learned runtime's steps over whole arrays (inputs up to 1280x720)."""
    masks = automatic_masks(runtime.segmenter, frames)
    dis = DisFlow()
    following = clip_flows(frames, dis, 1) if runtime.restorer.config.bidirectional else None
    restored = restore_clip(runtime.restorer, frames, masks, clip_flows(frames, dis), runtime.device,
                            runtime.dtype, next_flows=following)
    radius = smoothing_radius(fps, len(frames), runtime.smoothing_seconds)
    motion = estimate_motion(restored)
    metrics = {"shake_px_before": shake_px(motion, radius)}
    if runtime.stabilise:
        restored = stabilise(restored, motion, radius)
        metrics["shake_px_after"] = shake_px(estimate_motion(restored), radius)
    if runtime.interpolator is not None:
        restored = interpolate_clip(runtime.interpolator, restored, runtime.device)
    if runtime.upscaler is not None:
        restored = upscale_clip(runtime.upscaler, restored, runtime.device)
    metrics["tooth_area_fraction"] = float(masks.mean())
    return restored, masks, metrics


@pytest.mark.parametrize("options", [{"stabilise": True}, {"stabilise": True, "upscale": True, "interpolate": True}],
                         ids=["stabilised", "sr2-interp2"])
def test_streamed_runtime_equals_whole_clip_processing(options: dict) -> None:
    """24 frames at 30 fps: the stabiliser holds 11 frames (radius 5 of a 1 s path), so
    frames leave it while later ones are still being restored."""
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu", precision="float32", **options)
    frames = render_clip(clip_seed(0, "test", 3), frames=24, teeth=True).degraded
    if "upscale" in options:
        frames = frames[:6, :96, :128]
    expected, masks, metrics = _whole_clip(runtime, frames, 30.0)
    sink = CollectingSink()
    outcome = runtime.enhance_stream(iter(frames), len(frames), 30.0, sink)
    assert np.array_equal(np.stack(sink.frames), expected)
    assert np.array_equal(np.stack(sink.masks), masks)
    assert sink.fps == outcome.fps == (60.0 if "interpolate" in options else 30.0)
    for name, value in metrics.items():
        assert outcome.metrics[name] == value, name


def test_two_streams_at_once_on_one_runtime_give_what_each_gives_alone() -> None:
    """With two processing workers, two clips stream through the same runtime at the same
    time: each stream segments with a segmenter of its own (the cached image embedding is
    per stream), so neither sees the other's frames."""
    import threading

    runtime = LearnedVideoRuntime(default_models_dir(), "cpu", precision="float32")
    clips = [render_clip(clip_seed(0, "test", k), frames=10, height=96, width=128, teeth=True).degraded
             for k in (3, 4)]
    alone = []
    for frames in clips:
        sink = CollectingSink()
        runtime.enhance_stream(iter(frames), len(frames), 30.0, sink)
        alone.append((np.stack(sink.frames), np.stack(sink.masks)))
    sinks = [CollectingSink(), CollectingSink()]
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            runtime.enhance_stream(iter(clips[k]), len(clips[k]), 30.0, sinks[k])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for k in (0, 1):
        assert np.array_equal(np.stack(sinks[k].frames), alone[k][0]), k
        assert np.array_equal(np.stack(sinks[k].masks), alone[k][1]), k


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_streamed_workflow_writes_what_the_whole_clip_gives() -> None:
    """The Segmentation the workflow streams out is byte for byte the packing of the
    runtime's whole-clip masks, and its video decodes to the whole-clip frames as closely as
    their own encoding does (libx264 with threads does not give the same bytes twice, so
    the bitstreams themselves cannot be compared)."""
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu", precision="float32")
    source = builders.make_video_photographic(frames=14, rows=120, cols=160)
    frames, fps = read_frames(source)
    whole = runtime.enhance(frames, fps)
    objects, summary = process_video_instance(source, runtime, uid_seed="stream")
    # the video and the packed masks stay in temporary files until the objects are written
    assert all(isinstance(o.dataset.PixelData, io.BufferedIOBase) for o in objects[:2])
    video, seg = (dcmread(io.BytesIO(o.to_bytes())) for o in objects[:2])
    assert seg.PixelData == _pack_masks(whole.tooth_masks)
    streamed = read_frames(video)[0]
    assert streamed.shape == whole.frames.shape
    reference = read_frames(builders.with_pixel_stream(video, encode_h264_mp4(whole.frames, whole.fps)))[0]
    assert _psnr(streamed, whole.frames) > 30.0  # H.264 at CRF 20 and 4:2:0 chroma on a 160x120 clip
    assert abs(_psnr(streamed, whole.frames) - _psnr(reference, whole.frames)) < 0.5
    assert summary["metrics"]["shake_px_after"] == whole.metrics["shake_px_after"]
    assert summary["steps"] == whole.steps


def test_bad_streams_are_errors() -> None:
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False)
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="ended after 3 of the 4"):
        runtime.enhance_stream(iter(frames), 4, 30.0, CollectingSink())
    with pytest.raises(ValueError, match="more than the 2"):
        runtime.enhance_stream(iter(frames), 2, 30.0, CollectingSink())
    with pytest.raises(ValueError, match="fps"):
        runtime.enhance_stream(iter(frames), 3, 0.0, CollectingSink())
    with pytest.raises(ValueError, match="frame 1 is 48x32"):
        list(checked_frames([frames[0], np.zeros((32, 48, 3), np.uint8)], 2))
    with pytest.raises(ValueError, match="at least 16x16"):
        list(checked_frames([np.zeros((8, 8, 3), np.uint8)], 1))
    with pytest.raises(ValueError, match="at least one frame"):
        list(checked_frames([], 0))


def test_a_truncated_stream_fails_the_instance_after_decoding_started() -> None:
    """The decoder finds the truncation only at the end of the stream, when the runtime has
    already restored frames: the job fails with the decoder's MediaError, nothing is written."""
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=True)
    source = builders.make_video_photographic(frames=6, rows=64, cols=96)
    source = builders.with_pixel_stream(source, encapsulated_bitstream(source.PixelData), frames=9)
    assert open_frames(source).count == 9
    with pytest.raises(MediaError, match="truncated: decoded 6 of 9"):
        process_video_instance(source, runtime, uid_seed="cut")


def test_stream_stabiliser_equals_the_whole_clip_one() -> None:
    rng = np.random.default_rng(1)
    for count in (1, 2, 5, 31):
        for radius in (0, 1, 3, 15):
            path = np.cumsum(rng.normal(size=(count, 3)), axis=0)
            full = moving_average(path, radius)
            assert all(np.array_equal(full[t], smoothed_row(path, t, radius, count)) for t in range(count))
    frames = rng.integers(0, 256, (20, 36, 52, 3), dtype=np.uint8)
    motion = rng.normal(size=(20, 3)) * [2.0, 2.0, 0.01]
    motion[0] = 0.0
    for radius in (1, 4, 9):
        stabiliser, out = StreamStabiliser(20, radius), []
        for frame, row in zip(frames, motion, strict=True):
            out += stabiliser.push(frame, row)
            assert len(stabiliser.pending) <= radius + 1
        assert np.array_equal(np.stack(out), stabilise(frames, motion, radius))
    single = StreamStabiliser(1, 0)
    assert len(single.push(frames[0], motion[0])) == 1
    with pytest.raises(ValueError, match="more than the 1"):
        single.push(frames[1], motion[1])
