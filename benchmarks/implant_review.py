"""Implant review benchmark: what a dentist's review of a radiograph costs the node.

For a periapical (416 x 416) and a panoramic (1000 x 2000) training-style phantom (seeds
``10_000 + k``, outside the training scenes) wrapped as DICOM, the AI's findings are made
as the processing job makes them (:func:`process_radiograph_instance`), then a review that
keeps the first finding with a named system and draws a box around the true extent of the
last implant is timed end to end (:func:`correct_implants`: the radiograph decoded, the
models run again to recover the findings' parts, the drawn box identified, four objects
written in memory), median and range of ``--runs`` runs after one untimed run. The box
alone through the identifier (``identify_box`` on stage-1 parts already detected) is timed
too. This is the work of the ``correct`` job; the HTTP round trip adds little.

Run from the repository root: ``python -m benchmarks.implant_review [--runs 5] [--device
cpu]``. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import hardware, median
from dicom_service.media.pixels import load_radiograph
from dicom_service.pipelines.implant_correction import ImplantEdit, ImplantReview, correct_implants, reported_findings
from dicom_service.pipelines.radiograph import process_radiograph_instance
from dicom_service.training.radiograph_phantoms import render_panoramic, render_periapical
from dicom_service.vision.registry import build_radiograph_runtime, default_models_dir
from tests import builders


def _case(name: str, ds, truth: list[tuple[float, ...]], runtime, runs: int) -> dict:  # noqa: ANN001
    _, summary = process_radiograph_instance(ds, runtime, uid_seed="bench")
    reported = reported_findings(summary)
    implants = [ImplantEdit(finding=1, system="Straumann BLT")] if reported else []
    review = ImplantReview(implants=(*implants, ImplantEdit(box=tuple(float(v) for v in truth[-1]))),
                           operator="Smith^Anna^^Dr")
    times = []
    for run in range(runs + 1):
        started = time.perf_counter()
        correct_implants(ds, runtime, reported, review, uid_seed=f"bench/{run}")
        if run:
            times.append((time.perf_counter() - started) * 1000)
    image = load_radiograph(ds)
    parts = runtime.detect_parts(image)
    boxes = []
    for _ in range(runs):
        started = time.perf_counter()
        runtime.identify_box(image, truth[-1], parts=parts)
        boxes.append((time.perf_counter() - started) * 1000)
    return {"case": name, "rows": int(ds.Rows), "columns": int(ds.Columns), "ai_findings": len(reported),
            "review_ms": round(median(times), 1), "review_ms_range": [round(min(times), 1), round(max(times), 1)],
            "identify_box_ms": round(median(boxes), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    runtime = build_radiograph_runtime("implants", args.device, default_models_dir())
    periapical = render_periapical(10_001, implants=2)
    panoramic = render_panoramic(10_002, implants=4)
    cases = [
        _case("periapical_416x416", builders.make_radiograph_from_scene(periapical, modality="IO"),
              [tuple(i.box) for i in periapical.implants], runtime, args.runs),
        _case("panoramic_1000x2000", builders.make_radiograph_from_scene(panoramic, modality="PX"),
              [tuple(i.box) for i in panoramic.implants], runtime, args.runs),
    ]
    print(json.dumps({"benchmark": "implant_review", "device": args.device, "torch_threads": torch.get_num_threads(),
                      "runs": args.runs, "hardware": hardware(), "cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
