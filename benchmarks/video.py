"""Video benchmark: restoration FPS, whole-pipeline FPS and prompt → mask latency.

Clips are degraded synthetic intraoral phantoms (:func:`render_clip`, held-out test
seeds) rendered at each size:

``restoration``
    :func:`restore_clip` with the bundled restoration model alone (masks and DIS flows
    computed beforehand and not timed): frames per second, the median of ``--repeats``
    runs (each run's in ``fps_runs``).
``pipeline``
    The whole video workflow on a Video Photographic DICOM instance holding the clip as
    H.264: decode (PyAV) → SAM automatic tooth masks → DIS flow → restoration →
    stabilisation → H.264 encode of the enhanced video → SEG and SR objects
    (:func:`process_video_instance`): frames per second, and how long each stage of the
    runtime's stream worked (``stage_busy_seconds``, its waits on the other stages left
    out; the stages run in threads, so the largest sets the pace).
``prompt_to_mask``
    With the image embedding cached (:meth:`ToothSegmenter.set_image` once), the latency of
    :meth:`ToothSegmenter.predict` for 3 clicks plus the previous logits: median and p90 ms.
``ten_second_clip`` (``--ten-second``)
    A 10 s 640x480 clip at 30 fps (the rendered clip played forwards and backwards up to
    300 frames) through the whole pipeline once: seconds.
``correction_ten_second_clip`` (``--ten-second``)
    A box on that clip's middle frame through the doctor-in-the-loop correction
    (:func:`~dicom_service.pipelines.correction.correct_tooth_masks`: decode, prompt,
    carry, automatic masks elsewhere, SEG): seconds with a radius of 15 frames and for
    the whole clip.
``restore_ten_second_clip`` (``--ten-second``)
    That clip enhanced again with the restoration guided by given tooth masks (the
    ``restore`` job after a correction, :func:`~dicom_service.pipelines.video.restore_video_instance`:
    decode → restore with the masks → stabilise → encode, amended video and report):
    seconds, and the stages' busy seconds.

Restoration runs in the precision ``--precision`` names (default ``auto``, what the node
picks: float16 on CUDA, bfloat16 on a CPU with native bfloat16, else float32; see
:mod:`dicom_service.vision.precision`); on CUDA the device is synchronised before each
clock read. ``--compile`` torch.compiles the restoration network and the tooth model's image
encoder, as ``models.compile``
does; the compilation falls in the restoration warm-up (``warmup_seconds``), which runs
the first, a middle and the last frame's paths before the clock starts.
``--segment-every 1,2`` times the pipeline cases again with the tooth model on every
second frame only (``models.segment_every``; the first value is the main case's). Run from the
repository root: ``python -m benchmarks.video [--sizes 640x480,1280x720] [--frames 30]
[--device auto] [--precision auto] [--compile] [--ten-second] [--segment-every 1,2]``.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/video.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import hardware, median


def log(text: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[video] {text}", file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def _video_dataset(frames: np.ndarray, fps: float) -> Any:
    """A Video Photographic instance (H.264 in MP4) holding ``frames``."""
    from pydicom.encaps import encapsulate

    from dicom_service.media.video_encode import encode_h264_mp4
    from tests.builders import make_video_photographic

    count, height, width = frames.shape[:3]
    ds = make_video_photographic(frames=1, rows=height, cols=width, fps=fps)
    ds.NumberOfFrames = count
    ds.StopTrim = count
    ds.PixelData = encapsulate([encode_h264_mp4(frames, fps)], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def looped_phantom(count: int, height: int, width: int) -> np.ndarray:
    """``(count, height, width, 3)`` uint8: the degraded 30-frame held-out phantom clip (test
    seed 60, with teeth) played forwards and backwards until ``count`` frames."""
    from dicom_service.training.video_phantoms import clip_seed, render_clip

    clip = render_clip(clip_seed(0, "test", 60), frames=30, height=height, width=width, teeth=True)
    cycle = np.concatenate([clip.degraded, clip.degraded[::-1]])
    return np.concatenate([cycle] * (count // cycle.shape[0] + 1))[:count]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_restoration(runtime: Any, clip: Any, device: str, repeats: int = 3) -> dict[str, Any]:
    """Restoration model alone on a clip (masks and flows prepared outside the clock),
    ``repeats`` timed runs: the median FPS, and each run's."""
    from dicom_service.vision.optical_flow import DisFlow, clip_flows
    from dicom_service.vision.restoration_model import restore_clip
    from dicom_service.vision.video_runtime import automatic_masks

    frames = clip.degraded
    masks = automatic_masks(runtime.segmenter, frames)
    dis = DisFlow()
    flows = clip_flows(frames, dis)
    following = clip_flows(frames, dis, step=1) if runtime.restorer.config.bidirectional else None
    # the warm-up takes every path of the timed run (first, middle and last frame), so a
    # compiled model is compiled before the clock starts
    warm = None if following is None else following[:3]
    started = time.perf_counter()
    restore_clip(runtime.restorer, frames[:3], masks[:3], flows[:3], device, runtime.dtype, next_flows=warm)
    _sync(device)
    warmup = time.perf_counter() - started
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        restore_clip(runtime.restorer, frames, masks, flows, device, runtime.dtype, next_flows=following)
        _sync(device)
        runs.append(time.perf_counter() - started)
    seconds = median(runs)
    return {"frames": int(frames.shape[0]), "seconds": round(seconds, 3), "fps": round(frames.shape[0] / seconds, 2),
            "fps_runs": [round(frames.shape[0] / r, 2) for r in runs], "warmup_seconds": round(warmup, 3)}


def bench_pipeline(runtime: Any, frames: np.ndarray, fps: float, device: str) -> dict[str, Any]:
    """Decode → segment → restore → stabilise → encode (+ SEG, SR) of one instance."""
    from dicom_service.pipelines.video import process_video_instance

    ds = _video_dataset(frames, fps)
    return _timed_workflow(runtime, device, lambda: process_video_instance(ds, runtime, uid_seed="bench"))


def _timed_workflow(runtime: Any, device: str, run: Any) -> dict[str, Any]:
    """Time ``run()`` (a workflow returning ``(objects, summary)``): seconds, frames per
    second, the objects' kinds and how long each stage of the runtime's stream worked."""
    _sync(device)
    started = time.perf_counter()
    objects, summary = run()
    _sync(device)
    seconds = time.perf_counter() - started
    return {"frames": int(summary["frames"]), "seconds": round(seconds, 3),
            "fps": round(summary["frames"] / seconds, 2), "objects": [o.kind for o in objects],
            "stage_busy_seconds": dict(getattr(runtime, "last_stage_seconds", {}))}


def bench_correction(runtime: Any, frames: np.ndarray, fps: float, device: str,
                     previous: np.ndarray) -> dict[str, Any]:
    """A dentist's box on the middle frame of a clip → the amended tooth SEG
    (:func:`correct_tooth_masks`, what ``POST /corrections/tooth-masks`` runs, with the AI's
    masks ``previous`` ``(T, H, W)`` of the other frames at hand as the endpoint reads them
    from the job's SEG): seconds with the correction carried 15 frames each side, and
    through the whole clip."""
    from dicom_service.pipelines.correction import MaskCorrection, correct_tooth_masks
    from dicom_service.vision.tooth_predictor import ToothSegmenter

    ds = _video_dataset(frames, fps)
    count, height, width = frames.shape[:3]
    box = np.array([0.1 * width, 0.2 * height, 0.9 * width, 0.8 * height])
    segmenter = ToothSegmenter(runtime.segmenter.model)
    result: dict[str, Any] = {"frames": int(count)}
    for name, radius in (("radius_15", 15), ("whole_clip", None)):
        _sync(device)
        started = time.perf_counter()
        correct_tooth_masks(ds, segmenter, MaskCorrection(frame=count // 2, box=box, radius=radius),
                            algorithm=runtime.info, uid_seed="bench", previous=previous)
        _sync(device)
        result[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
    return result


def bench_restore(runtime: Any, frames: np.ndarray, fps: float, device: str, masks: np.ndarray) -> dict[str, Any]:
    """The clip enhanced again with the restoration guided by ``masks`` ``(T, H, W)`` bool
    (a corrected Segmentation of them, written before the clock), as a ``restore`` job
    does: seconds, frames per second and the stages' busy seconds."""
    from dicom_service.pipelines.video import restore_video_instance
    from dicom_service.writers.seg import write_tooth_segmentation

    ds = _video_dataset(frames, fps)
    seg = write_tooth_segmentation(ds, masks, algorithm=runtime.info, uid_seed="bench/corrected")
    return _timed_workflow(runtime, device, lambda: restore_video_instance(ds, runtime, masks, seg, uid_seed="bench"))


def bench_prompt(runtime: Any, frame: np.ndarray, runs: int, device: str) -> dict[str, Any]:
    """Prompt → mask latency with a cached image embedding (3 clicks + previous logits)."""
    segmenter = runtime.segmenter
    segmenter.set_image(frame)
    h, w = frame.shape[:2]
    points = np.array([[w * 0.5, h * 0.5], [w * 0.3, h * 0.55], [w * 0.7, h * 0.45]], np.float32)
    labels = np.array([1, 1, 0], np.int64)
    previous = segmenter.predict(points[:1], labels[:1]).low_res_logits
    times = []
    for _ in range(runs):
        _sync(device)
        started = time.perf_counter()
        segmenter.predict(points, labels, mask_input=previous)
        _sync(device)
        times.append((time.perf_counter() - started) * 1000.0)
    return {"runs": runs, "median_ms": round(median(times), 2), "p90_ms": round(_percentile(times, 90), 2)}


def bench_pipeline_each(runtime: Any, frames: np.ndarray, fps: float, device: str, every: list[int],
                        name: str) -> dict[str, Any]:
    """:func:`bench_pipeline` once per ``models.segment_every`` value in ``every``: the first
    as ``name``, each other N as ``name_segment_every_N``; the runtime is left at the first."""
    cases = {}
    for n in every:
        runtime.segment_every = n
        cases[name if n == every[0] else f"{name}_segment_every_{n}"] = bench_pipeline(runtime, frames, fps, device)
    runtime.segment_every = every[0]
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x480,1280x720", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=30, help="frames per clip")
    parser.add_argument("--prompt-runs", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--precision", default="auto", help="auto | float32 | bfloat16 | float16 (CUDA only)")
    parser.add_argument("--repeats", type=int, default=3, help="timed restoration runs per size (median)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the restoration network and the SAM image encoder (models.compile); "
                             "compilation is in the warm-up")
    parser.add_argument("--ten-second", action="store_true", help="also run a 10 s 640x480 clip end to end")
    parser.add_argument("--segment-every", default="1",
                        help="comma-separated models.segment_every values for the pipeline cases (default 1); "
                             "the first gives 'pipeline' and 'ten_second_clip', each other N "
                             "'pipeline_segment_every_N' and 'ten_second_clip_segment_every_N'")
    args = parser.parse_args(argv)
    every = [int(v) for v in args.segment_every.split(",")]
    if not every or min(every) < 1:
        parser.error("--segment-every takes integers >= 1")

    import torch

    from dicom_service.training.video_phantoms import clip_seed, render_clip
    from dicom_service.vision.precision import native_bfloat16, precision_name
    from dicom_service.vision.registry import default_models_dir, resolve_device
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    device = resolve_device(args.device)
    runtime = LearnedVideoRuntime(args.models or default_models_dir(), device, precision=args.precision,
                                  compile_models=args.compile, segment_every=every[0])
    result: dict[str, Any] = {"benchmark": "video", "device": device, "threads": torch.get_num_threads(),
                              "precision": precision_name(runtime.dtype), "compiled": args.compile,
                              "cpu_native_bfloat16": native_bfloat16(),
                              "hardware": hardware(), "algorithm": runtime.info.version, "cases": {}}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    for index, text in enumerate(args.sizes.split(",")):
        width, height = _size(text)
        log(f"rendering {args.frames} frames {width}x{height}")
        clip = render_clip(clip_seed(0, "test", 50 + index), frames=args.frames, height=height, width=width,
                           teeth=True)
        case = {"restoration": bench_restoration(runtime, clip, device, args.repeats)}
        log(f"{text}: restoration {case['restoration']['fps']} fps")
        for key, timed in bench_pipeline_each(runtime, clip.degraded, clip.fps, device, every, "pipeline").items():
            case[key] = timed
            log(f"{text}: {key} {timed['fps']} fps")
        case["prompt_to_mask"] = bench_prompt(runtime, clip.degraded[0], args.prompt_runs, device)
        result["cases"][f"{width}x{height}"] = case
    if args.ten_second:
        log("10 s 640x480 clip (300 frames) end to end")
        ten = looped_phantom(300, 480, 640)
        result.update(bench_pipeline_each(runtime, ten, 30.0, device, every, "ten_second_clip"))
        from dicom_service.vision.tooth_predictor import ToothSegmenter
        from dicom_service.vision.video_runtime import automatic_masks

        log("a correction on the 10 s clip")
        masks = automatic_masks(ToothSegmenter(runtime.segmenter.model), ten)
        result["correction_ten_second_clip"] = bench_correction(runtime, ten, 30.0, device, masks)
        log("the 10 s clip enhanced again with given tooth masks (a restore job)")
        result["restore_ten_second_clip"] = bench_restore(runtime, ten, 30.0, device, masks)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
