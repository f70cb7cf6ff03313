"""Implant runtime benchmark: latency of ``LearnedImplantRuntime.detect`` per radiograph.

Images are the training phantoms of :mod:`dicom_service.training.radiograph_phantoms`,
read as ``image / 4095`` like the model was trained on (seeds ``10_000 + k``, never in a
training set), so detection does real work (parts, grouping, identification):

``periapical_416x416``
    :func:`render_periapical` 416 x 416 (rows x cols) with 1-2 implants: one letterboxed
    model window.
``panoramic_1000x2000``
    :func:`render_panoramic` 1000 rows x 2000 columns with 1-6 implants: overlapping
    square tiles of the short side.

Each case cycles over ``--images`` phantoms; after ``--warmup`` untimed runs, ``--runs``
timed runs each call ``runtime.detect_parts(image)`` (stage 1: tiling, ViT + Mask R-CNN,
per-class NMS) and then ``runtime.detect(image, parts=parts)`` (the rest: grouping,
crops, identifier), which together are exactly ``runtime.detect(image)``. On CUDA the
device is synchronised before each clock read. Median and p90 (linear interpolation)
are reported in milliseconds, with the torch thread count, the CPU model (from
``/proc/cpuinfo``) and the GPU name if torch sees one.

Run from the repository root: ``python -m benchmarks.implants [--runs 20] [--device auto]
[--models models] [--half]``. Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/implants.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import hardware

SEED0 = 10_000


def log(text: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[implants] {text}", file=sys.stderr, flush=True)


def find_bundle(models: Path) -> Path:
    """The bundle folder: ``models`` itself if it holds ``config.json``, else ``models/implants``.

    Raises
    ------
    SystemExit
        Neither holds a ``config.json``.
    """
    for candidate in (models, models / "implants"):
        if (candidate / "config.json").is_file():
            return candidate
    raise SystemExit(f"no implant bundle (config.json) in {models} or {models / 'implants'}")


def phantoms(kind: str, count: int) -> list[np.ndarray]:
    """``count`` phantoms of ``kind`` as ``(rows, cols)`` float32 images in [0, 1].

    ``"periapical"``: 416 x 416 with 1 or 2 implants; ``"panoramic"``: 1000 x 2000.
    """
    from dicom_service.training.radiograph_phantoms import render_panoramic, render_periapical

    images = []
    for k in range(count):
        if kind == "periapical":
            scene = render_periapical(SEED0 + k, implants=1 + k % 2)
        else:
            scene = render_panoramic(SEED0 + k)
        images.append((scene.image.astype(np.float32) / np.float32(4095.0)))
    return images


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median and p90 (linear interpolation) of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"median": round(float(np.median(ms)), 2), "p90": round(float(np.percentile(ms, 90)), 2),
            "min": round(float(ms.min()), 2), "max": round(float(ms.max()), 2)}


def time_case(runtime: Any, images: Sequence[np.ndarray], runs: int, warmup: int,
              sync: Callable[[], None], precision: Callable[[], AbstractContextManager[Any]]
              ) -> dict[str, Any]:
    """Warm up, then time ``runs`` calls split into stage 1 and the rest.

    Returns
    -------
    dict
        ``total_ms``, ``stage1_detect_parts_ms``, ``rest_ms`` (each median/p90/min/max),
        the number of model windows per image and the median number of findings.
    """
    from dicom_service.vision.tiling import plan_windows

    total, stage1, rest, findings = [], [], [], []
    for i in range(warmup + runs):
        image = images[i % len(images)]
        with precision():
            sync()
            t0 = time.perf_counter()
            parts = runtime.detect_parts(image)
            sync()
            t1 = time.perf_counter()
            result = runtime.detect(image, parts=parts)
            sync()
            t2 = time.perf_counter()
        if i < warmup:
            continue
        total.append(t2 - t0)
        stage1.append(t1 - t0)
        rest.append(t2 - t1)
        findings.append(len(result.findings))
    rows, cols = images[0].shape
    return {
        "shape_rows_cols": [int(rows), int(cols)],
        "model_windows": len(plan_windows((rows, cols), runtime.size)),
        "images": len(images),
        "total_ms": stats_ms(total),
        "stage1_detect_parts_ms": stats_ms(stage1),
        "rest_ms": stats_ms(rest),
        "stage1_share_of_median": round(float(np.median(stage1)) / float(np.median(total)), 3),
        "findings_median": float(np.median(findings)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per case first (default 3)")
    parser.add_argument("--images", type=int, default=3, help="distinct phantoms cycled per case (default 3)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", type=Path, default=None,
                        help="bundle folder, or a folder holding implants/ (default: the bundled models/)")
    parser.add_argument("--half", action="store_true", help="CUDA only: autocast to float16")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cases", nargs="+", choices=("periapical", "panoramic"),
                        default=["periapical", "panoramic"])
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.images < 1:
        parser.error("--runs and --images must be >= 1, --warmup >= 0")

    import torch

    from dicom_service.domain import ConfigError
    from dicom_service.vision.implant_runtime import LearnedImplantRuntime
    from dicom_service.vision.registry import default_models_dir, resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.half and not device.startswith("cuda"):
        parser.error("--half needs a CUDA device")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bundle = find_bundle(args.models or default_models_dir())
    start = time.perf_counter()
    runtime = LearnedImplantRuntime(bundle, device)
    load_s = time.perf_counter() - start
    log(f"bundle {bundle} loaded on {device} in {load_s:.2f} s")

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def precision() -> AbstractContextManager[Any]:
        if args.half:
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    cases: dict[str, dict[str, Any]] = {}
    for kind in args.cases:
        images = phantoms(kind, args.images)
        rows, cols = images[0].shape
        name = f"{kind}_{rows}x{cols}"
        log(f"{name}: {args.warmup} warm-up + {args.runs} timed runs over {len(images)} images")
        cases[name] = time_case(runtime, images, args.runs, args.warmup, sync, precision)
        log(f"{name}: median {cases[name]['total_ms']['median']} ms")

    config = runtime.config
    gpu = torch.cuda.get_device_name(device if device.startswith("cuda") else 0) \
        if torch.cuda.is_available() else None
    report = {
        "benchmark": "implants",
        "bundle": {
            "path": str(bundle),
            "vit": config.get("vit"),
            "init": config.get("init"),
            "systems": len(runtime.identifier.systems),
            "detector_sha256": config.get("weights", {}).get("detector", {}).get("sha256"),
        },
        "device": device,
        "precision": "autocast float16" if args.half else "float32",
        "runs": args.runs,
        "warmup": args.warmup,
        "statistic": "median and p90 (linear interpolation) of wall milliseconds per image",
        "load_seconds": round(load_s, 3),
        "torch": {
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        },
        "cpu_model": hardware()["cpu_model"],
        "gpu": gpu,
        "hardware": hardware(),
        "cases": cases,
        "notes": [
            "total = runtime.detect_parts(image) + runtime.detect(image, parts=parts), "
            "which is runtime.detect(image)",
            "stage1_detect_parts = tiling/letterbox, ViT + Mask R-CNN per window, per-class NMS; "
            "rest = grouping, implant crops, identifier (calibrated top-3 systems)",
            "images are training-style phantoms (scene.image / 4095), seeds 10000+k; "
            "DICOM decoding is not included",
        ],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
