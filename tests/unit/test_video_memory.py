"""Memory of the video workflow: flows computed on demand, stabilisation in place, and the
admission check that fails a clip too large for the node instead of exhausting the machine."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydicom.encaps import encapsulate

from dicom_service.config import load_settings
from dicom_service.domain import UnsupportedInputError
from dicom_service.media.video import dataset_fps
from dicom_service.pipelines import video_memory
from dicom_service.pipelines.video_memory import (
    CODEC_BYTES_PER_PIXEL,
    FIXED_BYTES,
    MARGIN,
    check_video_fits,
    estimate_video_bytes,
    memory_limit_bytes,
    native_growth_bytes_per_pixel,
    video_budget_bytes,
)
from dicom_service.vision.baseline_video import ClassicalVideoRuntime
from dicom_service.vision.stabilisation import estimate_motion, stabilise
from tests import builders

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def learned():
    pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    return LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=True)


def test_restoration_with_flows_on_demand_equals_precomputed_flows(learned) -> None:
    from dicom_service.training.video_phantoms import clip_seed, render_clip
    from dicom_service.vision.optical_flow import ClipFlows, DisFlow, clip_flows
    from dicom_service.vision.restoration_model import restore_clip

    clip = render_clip(clip_seed(0, "test", 2), frames=4, teeth=True)
    frames, masks, dis = clip.degraded, clip.masks, DisFlow()
    model = learned.restorer
    eager = restore_clip(model, frames, masks, clip_flows(frames, dis), next_flows=clip_flows(frames, dis, 1))
    lazy = restore_clip(model, frames, masks, ClipFlows(frames, dis), next_flows=ClipFlows(frames, dis, 1))
    assert np.array_equal(eager, lazy)


def test_stabilisation_in_place_equals_a_new_array() -> None:
    from dicom_service.training.video_phantoms import clip_seed, render_clip

    frames = render_clip(clip_seed(0, "test", 5), frames=8).clean
    motion = estimate_motion(frames)
    copy = stabilise(frames, motion, 2)
    work = frames.copy()
    same = stabilise(work, motion, 2, in_place=True)
    assert same is work and np.array_equal(same, copy) and not np.array_equal(copy, frames)


def test_working_bytes_count_what_the_stream_holds(learned) -> None:
    """Per source pixel: the source frame and its mask (4 B), and the masks in the two
    output queues (3 items each, 1 B); per working pixel: three prepared frames with their
    two flows (3 + 16 B) and three segmented ones with their masks (3 + 1 + 16 B); per
    output pixel: the restored frames in the two output queues (3 items each, 3 B) and the
    stabiliser's ``radius + 2`` frames (3 B each); two motion rows per frame; x2 options add
    their frames. Only the motion rows grow with the clip; the classical baseline holds its
    stabilisation window and three denoised frames."""
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    source, working, output = 4 + 6, 3 * (19 + 20), 6 * 3  # bytes per pixel held by the stages' queues
    streamed = source + working + output
    vga = 480 * 640
    assert learned.working_bytes(300, 480, 640, 30.0) == (streamed + 17 * 3) * vga + 300 * 48  # radius 15
    assert learned.working_bytes(3000, 480, 640, 30.0) - learned.working_bytes(300, 480, 640, 30.0) == 2700 * 48
    assert learned.working_bytes(5, 480, 640, 30.0) == (streamed + 4 * 3) * vga + 5 * 48  # radius (5 - 1) // 2
    work, fit, uhd = 720 * 1280, 1080 * 1920, 2160 * 3840  # 1920x1080 and 3840x2160 are processed at 1280x720
    assert learned.working_bytes(300, 1080, 1920, 30.0) == (source + output + 17 * 3) * fit + working * work + 300 * 48
    assert learned.working_bytes(300, 2160, 3840, 30.0) == (source * uhd + working * work + (output + 17 * 3) * fit
                                                            + 300 * 48)
    # a still: one item in each queue (its only frame), one frame in the stabiliser's place
    one_source, one_working, one_output = 4 + 2, 19 + 20, 2 * 3
    assert learned.working_bytes(1, 2160, 3840, 1.0) == (one_source + one_output + 3) * uhd + one_working * work + 48
    both = LearnedVideoRuntime(default_models_dir(), "cpu", upscale=True, interpolate=True)
    assert both.working_bytes(300, 480, 640, 30.0) == (streamed + 17 * 3 + 6 + 12) * vga + 300 * 48
    still = (one_source + one_working + one_output + 3 + 12) * vga + 48  # one frame: no interpolation
    assert both.working_bytes(1, 480, 640, 1.0) == still
    # a 1280x720 video: super-resolved to 2560x1440, then brought down to 1920x1080 (one more frame)
    assert both.working_bytes(300, 720, 1280, 30.0) == (streamed + 17 * 3 + 6 + 12) * work + 3 * fit + 300 * 48
    assert both.working_bytes(300, 1080, 1920, 30.0) == learned.working_bytes(300, 1080, 1920, 30.0) + 6 * fit
    classical = ClassicalVideoRuntime()  # 3 bytes per pixel of (radius + 2) frames, 80 more, 72 per frame
    assert classical.working_bytes(3, 100, 200, 30.0) == (3 * 3 + 80) * 100 * 200 + 3 * 72  # radius 1
    assert classical.working_bytes(300, 480, 640, 30.0) == (3 * 17 + 80) * vga + 300 * 72  # radius 15


def test_compute_bytes_count_activations_per_frame_not_per_clip(learned) -> None:
    """Per working pixel the restoration (576 B), per output pixel the x2 networks where
    they run (416 B interpolation, 736 B super-resolution of the input); nothing per frame."""
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    vga, work = 480 * 640, 720 * 1280
    assert learned.compute_bytes(300, 480, 640, 30.0) == learned.compute_bytes(30_000, 480, 640, 30.0) == 576 * vga
    assert learned.compute_bytes(300, 2160, 3840, 30.0) == 576 * work  # 4K is processed at 1280x720
    both = LearnedVideoRuntime(default_models_dir(), "cpu", upscale=True, interpolate=True)
    assert both.compute_bytes(300, 480, 640, 30.0) == (576 + 416 + 736) * vga
    assert both.compute_bytes(1, 480, 640, 1.0) == (576 + 736) * vga  # a still: no interpolation
    assert both.compute_bytes(300, 1080, 1920, 30.0) == 576 * work + 416 * 1080 * 1920  # no super-resolution
    assert ClassicalVideoRuntime().compute_bytes(300, 480, 640, 30.0) == 48 * vga


def test_a_long_clip_streams_through_the_workflow_in_bounded_memory(learned) -> None:
    """Three times the frames cost next to nothing more: the peak that tracemalloc sees (numpy
    arrays and Python objects) grows by the encoded video and the packed masks only, under
    40 kB per 320x240 frame. Holding the clip, as the workflow once did, costs 0.75 MB per
    frame (the decoded, restored and stacked frames) and would break this."""
    from dicom_service.pipelines.video import process_video_instance

    process_video_instance(builders.make_video_photographic(frames=2, rows=240, cols=320), learned, uid_seed="warm")
    peaks = []
    for frames in (40, 120):
        source = builders.make_video_photographic(frames=frames, rows=240, cols=320)
        tracemalloc.start()
        try:
            objects, summary = process_video_instance(source, learned, uid_seed="long")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert [o.kind for o in objects] == ["video", "seg", "sr"] and summary["frames"] == frames
        assert int(objects[0].dataset.NumberOfFrames) == int(objects[1].dataset.NumberOfFrames) == frames
    assert peaks[1] - peaks[0] < 80 * 40_000, [p / MIB for p in peaks]


def test_estimate_is_an_upper_bound_of_the_traced_arrays(learned) -> None:
    """The whole workflow on a 40-frame clip, after a 2-frame run has made the one-off
    allocations (covered by FIXED_BYTES): the peak of what it allocates (numpy arrays and
    Python objects, traced by tracemalloc) stays under the estimate less its fixed part and
    its allowances for activations, codecs and native growth (which tracemalloc does not see), and within
    2x of it. Holding every frame's flows, as the runtime once did, would add 16 bytes per
    pixel and frame (49 MB here) and break it. (The estimate counts every queue between
    the stages full, which happens when the last stage is the slowest; on a CPU the tooth
    model is, so the queues after it stay nearly empty and the peak is lower.)"""
    from dicom_service.pipelines.video import process_video_instance

    process_video_instance(builders.make_video_photographic(frames=2, rows=240, cols=320), learned, uid_seed="warm")
    source = builders.make_video_photographic(frames=40, rows=240, cols=320)
    untraced = (learned.compute_bytes(40, 240, 320, 30.0) + CODEC_BYTES_PER_PIXEL * 240 * 320
                + native_growth_bytes_per_pixel() * 240 * 320 * 40)
    estimate = estimate_video_bytes(40, 240, 320, learned) - FIXED_BYTES - int(MARGIN * untraced)
    tracemalloc.start()
    try:
        objects, _ = process_video_instance(source, learned, uid_seed="memory")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [o.kind for o in objects] == ["video", "seg", "sr"]
    assert peak < estimate < 2 * peak, (peak / MIB, estimate / MIB)


def test_estimate_formula_and_errors() -> None:
    runtime = ClassicalVideoRuntime()
    # the SEG's per-frame attributes (its bits and the H.264 output are on disk) and the native growth
    written = int((12 * 1024 + native_growth_bytes_per_pixel() * 48 * 64) * 30)
    computing = runtime.compute_bytes(30, 48, 64, 25.0) + CODEC_BYTES_PER_PIXEL * 48 * 64  # one frame's worth
    expected = int(MARGIN * (2 * 1000 + runtime.working_bytes(30, 48, 64, 25.0) + written + computing)) + FIXED_BYTES
    assert estimate_video_bytes(30, 48, 64, runtime, fps=25.0, source_bytes=1000) == expected
    with pytest.raises(ValueError, match="positive"):
        estimate_video_bytes(0, 48, 64, runtime)


def _huge_header_video():
    """A video whose header declares 1 000 000 frames of 1920x1080 over pixel data that is not
    even a video: only the header may be read, or the check would be a decode error."""
    ds = builders.make_video_photographic(frames=2, rows=64, cols=96)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 1_000_000, 1080, 1920
    ds.PixelData = encapsulate([b"not a video stream!!"], has_bot=False)
    return ds


def test_a_clip_over_the_budget_is_refused_before_decoding() -> None:
    runtime = ClassicalVideoRuntime()
    ds = _huge_header_video()
    need = estimate_video_bytes(1_000_000, 1080, 1920, runtime, fps=dataset_fps(ds),
                                source_bytes=len(ds.PixelData))
    with pytest.raises(UnsupportedInputError, match=r"1000000 frames of 1920x1080 .*workers.video_memory_mb"):
        check_video_fits(ds, runtime, 8 * 1024 * MIB)
    assert check_video_fits(ds, runtime, None) == need  # no limit known: nothing refused
    assert check_video_fits(ds, runtime, need) == need  # exactly at the budget: accepted
    del ds.Rows
    assert check_video_fits(ds, runtime, 1) == 0  # no size in the header: left to the decoder


def test_the_pipeline_refuses_before_decoding() -> None:
    from dicom_service.pipelines.video import process_video_instance

    with pytest.raises(UnsupportedInputError, match="video too large"):
        process_video_instance(_huge_header_video(), ClassicalVideoRuntime(), uid_seed="x", memory_budget=MIB)


def test_budget_configured_or_automatic(monkeypatch: pytest.MonkeyPatch) -> None:
    assert video_budget_bytes(300, 1) == video_budget_bytes(300, 4) == 300 * MIB
    limit = memory_limit_bytes()
    assert limit is not None and limit > 0  # Linux: physical memory or the cgroup limit
    one, two = video_budget_bytes(0, 1), video_budget_bytes(0, 2)
    assert one is not None and two is not None and 0 < one <= 0.75 * limit and two <= one // 2 + MIB
    monkeypatch.setattr(video_memory, "memory_limit_bytes", lambda: None)
    assert video_budget_bytes(0, 1) is None
    with pytest.raises(ValueError):
        video_budget_bytes(-1, 1)
    with pytest.raises(ValueError):
        video_budget_bytes(0, 0)


def test_setting_is_validated() -> None:
    assert load_settings(None).workers.video_memory_mb == 0
    assert load_settings(None, workers={"video_memory_mb": 2048}).workers.video_memory_mb == 2048
    with pytest.raises(Exception, match="video_memory_mb"):
        load_settings(None, workers={"video_memory_mb": -1})
