"""Video memory benchmark: peak resident memory of the whole video workflow against clip length.

For each size and frame count, a fresh Python process reads a Video Photographic DICOM file
(H.264 up to 1920x1080, HEVC above, as a 4K camera delivers it; a degraded phantom clip
played forwards and backwards up to the frame count), loads
the node's video runtime (``models.video: learned``, default options), resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``) and runs :func:`process_video_instance` (decode →
masks → restoration → stabilisation → encode → SEG, SR). It reports the peak resident set
(``VmHWM``) over that call, less the resident set before it.

Each child reads the clip and sets the allocator as the service does with its default
settings (the clip's pixel data left in its file; ``workers.malloc_mmap_threshold_kb``,
off by default). ``MALLOC_MMAP_THRESHOLD_=262144`` in the environment (glibc's own
variable, the same as the setting at 256) measures the allocator with a fixed threshold.

Two frame counts per size give the marginal memory per frame (the slope, which is what
decides how long a clip fits) and the fixed part. Beside each measurement stands what the
node's admission check (:func:`dicom_service.pipelines.video_memory.estimate_video_bytes`)
predicts for it, so the estimate can be checked against the machine. The workflow streams a
clip through (decode, enhance, encode frame by frame), so the slope is small: what grows is
the encoded output and the packed Segmentation bits.

``--stages`` instead measures the parts that do not grow with the clip, each in a fresh
process from its first call (as a job meets them): a runtime (``learned``, ``learned-sr2``,
``learned-interp2``, ``baseline``) enhancing 3 frames, against its
``working_bytes + compute_bytes``; and the codecs (``codec``: a 40-frame H.264 instance
decoded and encoded frame by frame), against the workflow's ``CODEC_BYTES_PER_PIXEL``.
These are the figures the per-pixel allowances of the admission check come from.

``--correction`` measures a dentist's correction instead (what ``POST
/corrections/tooth-masks`` runs: :func:`~dicom_service.pipelines.correction.correct_tooth_masks`
with a box on the middle frame, carried through the whole clip, and the amended
Segmentation written to a file), each run in a fresh process with the tooth model loaded
before the clock, against :func:`~dicom_service.pipelines.correction.correction_bytes`.

``--restore`` measures a ``restore`` job instead (a clip enhanced again with a dentist's
corrected masks: :func:`~dicom_service.pipelines.video.restore_video_instance` with the
masks read from a corrected Segmentation's file, memory-mapped, as the job reads them, and
the amended video and report written to files), each run in a fresh process with the
runtime loaded and the Segmentation written before the clock, against the same admission
estimate as processing the clip.

``--still`` measures a photograph instead (a VL Photographic JPEG of each size: the phantom
scene rendered small and enlarged), one run each in a fresh process like the clips, against
the same admission estimate (a single frame: no codec look-ahead,
``STILL_CODEC_BYTES_PER_PIXEL``).

``--longest`` measures nothing: it inverts the node's estimate against the automatic budget
of this process (default learned runtime loaded, one processing worker, the allocator set
as the service sets it) and reports the longest clip admitted at each size, at 30 fps with
the source left in its file (as the service reads it).

Linux only (``/proc``). Run from the repository root: ``python -m benchmarks.video_memory
[--sizes 640x480,1280x720] [--frames 60,600] [--stages | --correction | --restore | --still | --longest]``. Prints
one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/video_memory.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.common import hardware
from dicom_service.media.pixel_file import DEFER_BYTES

MIB = 1024.0 * 1024.0


def log(text: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[video_memory] {text}", file=sys.stderr, flush=True)


def _status_mib(field: str) -> float:
    from dicom_service.pipelines.video_memory import process_status_bytes

    value = process_status_bytes(field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return value / MIB


def write_clip(path: Path, width: int, height: int, frames: int) -> None:
    """A Video Photographic DICOM file of a degraded phantom clip, ``frames`` long at 30 fps:
    H.264 up to 1920x1080, HEVC above (:func:`write_hevc_clip`)."""
    from benchmarks.video import _video_dataset, looped_phantom

    if width * height > 1920 * 1080:
        write_hevc_clip(path, width, height, frames)
        return
    _video_dataset(looped_phantom(frames, height, width), 30.0).save_as(path, enforce_file_format=True)


def write_hevc_clip(path: Path, width: int, height: int, frames: int) -> None:
    """The phantom clip as HEVC/H.265 Main Profile (transfer syntax .107), how a 4K-class
    camera clip arrives (H.264 Level 4.2 stops at 1920x1080): the 30-frame clip played
    forwards and backwards, encoded by libx265 a frame at a time (the clip is not held whole)."""
    from benchmarks.video import looped_phantom
    from tests.builders import make_hevc_video_photographic

    cycle = looped_phantom(60, height, width)
    ds = make_hevc_video_photographic((cycle[t % len(cycle)] for t in range(frames)), count=frames,
                                      rows=height, cols=width)
    ds.save_as(path, enforce_file_format=True)


def write_still(path: Path, width: int, height: int) -> None:
    """A VL Photographic DICOM file (JPEG Baseline) of ``width x height``: the phantom scene
    rendered at an eighth of the size and enlarged (quick, and as compressible as a photo)."""
    import cv2

    from tests.builders import VL_PHOTOGRAPHIC, _jpeg_dataset, intraoral_scene

    small, _ = intraoral_scene(1, max(16, height // 8), max(16, width // 8), 0)
    big = cv2.resize(small[0], (width, height), interpolation=cv2.INTER_LINEAR)
    _jpeg_dataset(big, VL_PHOTOGRAPHIC, "XC", study_uid=None, series_uid=None,
                  description="Intraoral photo phantom").save_as(path, enforce_file_format=True)


def _as_the_service() -> None:
    """Set the allocator as the service does at start (``workers.malloc_mmap_threshold_kb``;
    ``MALLOC_MMAP_THRESHOLD_`` in the environment, glibc's own variable, overrides it)."""
    import os

    from dicom_service.config import WorkerSettings
    from dicom_service.malloc_tuning import set_mmap_threshold

    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        set_mmap_threshold(WorkerSettings().malloc_mmap_threshold_kb * 1024)


def _peak_growth(run: Any) -> tuple[Any, float, float, float]:
    """``run()`` with the kernel's peak-RSS counter reset just before it: its result, the
    resident MiB before, the peak growth in MiB over it, and its seconds."""
    import time

    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    return result, before, _status_mib("VmHWM") - before, seconds


def child(path: Path) -> dict[str, Any]:
    """Measure one run in this process (called in a fresh interpreter)."""
    import pydicom
    import torch

    from dicom_service.pipelines.video import process_video_instance
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    _as_the_service()
    ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)  # as the service reads a stored clip
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu")
    (objects, summary), before, growth, _ = _peak_growth(lambda: process_video_instance(ds, runtime, uid_seed="memory"))
    return {"frames": int(summary["frames"]), "rss_before_mib": round(before, 1),
            "peak_growth_mib": round(growth, 1), "objects": [o.kind for o in objects],
            "threads": torch.get_num_threads()}


def correction_child(path: Path) -> dict[str, Any]:
    """Measure one whole-clip correction in this process (called in a fresh interpreter)."""

    import numpy as np
    import pydicom

    from dicom_service.domain import AlgorithmInfo
    from dicom_service.pipelines.base import ResultObject
    from dicom_service.pipelines.correction import MaskCorrection, correct_tooth_masks
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.tooth_predictor import ToothSegmenter
    from dicom_service.vision.tooth_sam import load_sam_bundle

    _as_the_service()
    segmenter = ToothSegmenter(load_sam_bundle(default_models_dir() / "tooth_sam", "cpu")[0])
    ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    count, height, width = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    box = np.array([0.1 * width, 0.2 * height, 0.9 * width, 0.8 * height])

    def run() -> Any:
        result = correct_tooth_masks(ds, segmenter, MaskCorrection(frame=count // 2, box=box),
                                     algorithm=AlgorithmInfo(name="bench", version="1", family="ai"),
                                     uid_seed="memory")
        with tempfile.TemporaryFile() as file:
            ResultObject("seg", result.segmentation).write(file)
        return result

    result, before, growth, seconds = _peak_growth(run)
    return {"frames": result.frames, "rss_before_mib": round(before, 1), "peak_growth_mib": round(growth, 1),
            "seconds": round(seconds, 2)}


def restore_child(path: Path) -> dict[str, Any]:
    """Measure one ``restore`` job's work in this process (called in a fresh interpreter)."""

    import numpy as np
    import pydicom

    from dicom_service.media.seg_frames import segmentation_frames
    from dicom_service.pipelines.base import ResultObject
    from dicom_service.pipelines.video import restore_video_instance
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.video_runtime import LearnedVideoRuntime
    from dicom_service.writers.seg import write_tooth_segmentation

    _as_the_service()
    ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)  # as the service reads a stored clip
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu")
    count, height, width = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    masks = np.zeros((count, height, width), bool)  # a dentist's masks: a box on every frame
    masks[:, height // 5:4 * height // 5, width // 10:9 * width // 10] = True
    seg_path = path.with_suffix(".seg.dcm")
    seg = write_tooth_segmentation(ds, masks, algorithm=runtime.info, uid_seed="memory/corrected")
    with seg_path.open("wb") as file:
        ResultObject("seg", seg).write(file)
    del masks, seg
    corrected = pydicom.dcmread(seg_path, defer_size=DEFER_BYTES)  # as the restore job reads it

    def run() -> Any:
        objects, summary = restore_video_instance(
            ds, runtime, segmentation_frames(corrected, str(ds.SOPInstanceUID)), corrected, uid_seed="memory")
        for obj in objects:
            with tempfile.TemporaryFile() as file:
                obj.write(file)
        return objects, summary

    (objects, summary), before, growth, seconds = _peak_growth(run)
    seg_path.unlink()
    return {"frames": int(summary["frames"]), "rss_before_mib": round(before, 1),
            "peak_growth_mib": round(growth, 1), "objects": [o.kind for o in objects],
            "seconds": round(seconds, 2)}


#: What ``--stages`` measures: runtime names of the registry, and the codecs.
STAGES = ("learned", "learned-sr2", "learned-interp2", "baseline", "codec")


class _Discard:
    """An enhancement sink that keeps nothing (the stage probes measure the runtime alone)."""

    def start(self, fps: float) -> None:
        pass

    def frame(self, frame: Any) -> None:
        pass

    def mask(self, mask: Any) -> None:
        pass


def stage_child(stage: str, width: int, height: int) -> dict[str, Any]:
    """Measure one stage's first run in this process (called in a fresh interpreter)."""
    from benchmarks.video import _video_dataset, looped_phantom

    _as_the_service()
    from dicom_service.pipelines.video_memory import CODEC_BYTES_PER_PIXEL

    if stage == "codec":
        from dicom_service.media.video import open_frames
        from dicom_service.media.video_encode import H264Encoder

        ds = _video_dataset(looped_phantom(40, height, width), 30.0)
        predicted = CODEC_BYTES_PER_PIXEL * width * height
        before = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        with H264Encoder(30.0) as encoder:
            for frame in open_frames(ds).frames:
                encoder.add(frame)
            encoder.close()
    else:
        from dicom_service.vision.registry import build_video_runtime

        runtime = build_video_runtime(stage, "cpu")
        frames = looped_phantom(3, height, width)
        predicted = runtime.working_bytes(3, height, width, 30.0) + runtime.compute_bytes(3, height, width, 30.0)
        before = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        runtime.enhance_stream(iter(frames), 3, 30.0, _Discard())
    growth = _status_mib("VmHWM") - before
    return {"stage": stage, "size": f"{width}x{height}", "peak_growth_mib": round(growth, 1),
            "bytes_per_pixel": round(growth * MIB / (width * height)), "predicted_mib": round(predicted / MIB, 1)}


def measure_stage(stage: str, width: int, height: int) -> dict[str, Any]:
    """Run :func:`stage_child` in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_memory", "--stage-child", stage,
                           "--sizes", f"{width}x{height}"], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: The child of each ``measure`` mode: the workflow, a correction, a restore job.
CHILD_FLAGS = {"process": "--child", "still": "--child", "correction": "--correction-child",
               "restore": "--restore-child"}


def measure(width: int, height: int, frames: int, folder: Path, runtime: Any, *,
            mode: str = "process") -> dict[str, Any]:
    """Write the clip, run :func:`child` (or :func:`correction_child`, :func:`restore_child`
    as ``mode`` says) in a fresh process, add the node's estimate for ``runtime`` (or for a
    correction)."""
    import pydicom

    from dicom_service.pipelines.correction import correction_bytes
    from dicom_service.pipelines.video_memory import check_video_fits

    path = folder / f"clip_{width}x{height}_{frames}.dcm"
    if mode == "still":
        write_still(path, width, height)
    else:
        write_clip(path, width, height, frames)
    if mode == "correction":
        estimate = correction_bytes(frames, height, width)
    else:
        # what the node plans for this file, read as the service reads it
        estimate = check_video_fits(pydicom.dcmread(path, defer_size=DEFER_BYTES), runtime, None)
    flag = CHILD_FLAGS[mode]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_memory", flag, str(path)],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1])
    path.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["estimate_mib"] = round(estimate / MIB, 1)
    return result


def longest_clips(sizes: list[tuple[int, int]], runtime: Any) -> dict[str, Any]:
    """The longest clip the automatic budget admits at each ``(width, height)`` (30 fps)."""
    from dicom_service.pipelines.video_memory import estimate_video_bytes, video_budget_bytes

    budget = video_budget_bytes(0, 1)
    if budget is None:
        raise RuntimeError("no memory limit known on this machine")
    clips = {}
    for width, height in sizes:
        low, high = 0, 1
        while estimate_video_bytes(high, height, width, runtime, fps=30.0) <= budget:
            low, high = high, high * 2
        while high - low > 1:  # the largest count whose estimate fits
            mid = (low + high) // 2
            low, high = (mid, high) if estimate_video_bytes(mid, height, width, runtime, fps=30.0) <= budget \
                else (low, mid)
        clips[f"{width}x{height}"] = {"frames": low, "minutes_at_30_fps": round(low / 30.0 / 60.0, 2),
                                      "estimate_mib_per_frame": round(
                                          (estimate_video_bytes(1001, height, width, runtime, fps=30.0)
                                           - estimate_video_bytes(1, height, width, runtime, fps=30.0)) / 1000 / MIB,
                                          3)}
    return {"benchmark": "video_memory_longest", "budget_gib": round(budget / 1024**3, 2), "clips": clips}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x480,1280x720", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--frames", default="60,600", help="two comma-separated frame counts")
    parser.add_argument("--stages", action="store_true",
                        help="measure the runtimes and codecs on a few frames instead (see the module doc)")
    parser.add_argument("--longest", action="store_true",
                        help="report the longest clip the automatic budget admits (see the module doc)")
    parser.add_argument("--correction", action="store_true",
                        help="measure a whole-clip correction instead (see the module doc)")
    parser.add_argument("--restore", action="store_true",
                        help="measure a restore job (the clip enhanced again with corrected masks) instead")
    parser.add_argument("--still", action="store_true",
                        help="measure a photograph of each size instead (see the module doc)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--correction-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--restore-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stage-child", choices=STAGES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in text.lower().split("x")) for text in args.sizes.split(",")]
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return 0
    if args.correction_child is not None:
        print(json.dumps(correction_child(args.correction_child)))
        return 0
    if args.restore_child is not None:
        print(json.dumps(restore_child(args.restore_child)))
        return 0
    if args.stage_child is not None:
        print(json.dumps(stage_child(args.stage_child, *sizes[0])))
        return 0
    if args.stages:
        stages = []
        for width, height in sizes:
            for stage in STAGES:
                log(f"{width}x{height}, {stage}")
                stages.append(measure_stage(stage, width, height))
        print(json.dumps({"benchmark": "video_memory_stages", "hardware": hardware(), "stages": stages}, indent=2))
        return 0
    if args.longest:
        _as_the_service()
        from dicom_service.vision.registry import default_models_dir
        from dicom_service.vision.video_runtime import LearnedVideoRuntime

        runtime = LearnedVideoRuntime(default_models_dir(), "cpu")
        print(json.dumps({**longest_clips(sizes, runtime), "hardware": hardware()}, indent=2))
        return 0
    if args.still:
        from dicom_service.vision.registry import default_models_dir
        from dicom_service.vision.video_runtime import LearnedVideoRuntime

        _as_the_service()
        runtime = LearnedVideoRuntime(default_models_dir(), "cpu")
        stills = {}
        with tempfile.TemporaryDirectory(prefix="video-memory-") as tmp:
            for width, height in sizes:
                log(f"{width}x{height}, a photograph")
                stills[f"{width}x{height}"] = measure(width, height, 1, Path(tmp), runtime, mode="still")
        print(json.dumps({"benchmark": "video_memory_still", "algorithm": runtime.info.version,
                          "hardware": hardware(), "cases": stills}, indent=2))
        return 0
    counts = sorted(int(v) for v in args.frames.split(","))
    if len(counts) != 2 or counts[0] < 2 or counts[0] == counts[1]:
        parser.error("--frames needs two different counts >= 2")
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    _as_the_service()  # the estimate as the service makes it
    runtime = LearnedVideoRuntime(default_models_dir(), "cpu")  # the child's runtime, for its estimate
    mode = "correction" if args.correction else "restore" if args.restore else "process"
    result: dict[str, Any] = {"benchmark": {"process": "video_memory"}.get(mode, f"video_memory_{mode}"),
                              "algorithm": runtime.info.version,
                              "hardware": hardware(), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="video-memory-") as tmp:
        for width, height in sizes:
            runs = []
            for frames in counts:
                log(f"{width}x{height}, {frames} frames")
                runs.append(measure(width, height, frames, Path(tmp), runtime, mode=mode))
            slope = (runs[1]["peak_growth_mib"] - runs[0]["peak_growth_mib"]) / (counts[1] - counts[0])
            estimate_slope = (runs[1]["estimate_mib"] - runs[0]["estimate_mib"]) / (counts[1] - counts[0])
            result["cases"][f"{width}x{height}"] = {
                "runs": runs, "mib_per_frame": round(slope, 2), "estimate_mib_per_frame": round(estimate_slope, 2),
                "fixed_mib": round(runs[0]["peak_growth_mib"] - slope * counts[0], 1)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
