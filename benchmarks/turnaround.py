"""Turnaround benchmark: study into Orthanc → results back in Orthanc, minus quiet windows.

Set-up: Debian's Orthanc with the deployment configuration of ``deploy/orthanc`` (its Lua
script auto-routes stable studies to the node; ``StableAge`` 1 s, the smallest Orthanc
allows) and ``python -m dicom_service serve`` as a subprocess (``routing.stability_seconds``
0.25 s, real settings otherwise, fsync on), both on free ports. For each case a new study
is sent into Orthanc with DCMTK ``storescu`` (``TCP_NODELAY=1``) and Orthanc's REST API is
polled every 50 ms until every expected result is there.

Cases: ``radiograph`` (one 416x416 intra-oral radiograph with two implants → SR, SEG,
PR, SC) and ``video`` (a 10 s 640x480 30 fps H.264 Video Photographic clip → enhanced
video, tooth SEG, SR). One small warm-up study of each kind runs first and is not counted.

What is subtracted (all times from this machine's one clock):

``orthanc_quiet_s``
    storescu's end → creation of Orthanc's store job toward the node (Orthanc's
    ``StableAge`` window plus its monitor's polling granularity), from the job's
    ``CreationTime``.
``node_quiet_s``
    completion of Orthanc's store job (the last instance is at the node) → creation of
    the node's processing job (``routing.stability_seconds`` plus router wake-up), from
    the job's ``CompletionTime`` and the node's ``created_at``.

``turnaround_excluding_quiet_s`` = ``total_s`` − ``orthanc_quiet_s`` − ``node_quiet_s``; the
breakdown also gives the processing and dispatch attempt durations from the node's job
logs. Medians over ``--repeats`` runs.

Run from the repository root: ``python -m benchmarks.turnaround [--repeats 3]``.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/turnaround.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hardware, median, tool_version

ORTHANC_STABLE_AGE_S = 1
NODE_STABILITY_S = 0.25
POLL_S = 0.05


def log(text: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[turnaround] {text}", file=sys.stderr, flush=True)


def orthanc_time(text: str) -> float:
    """Epoch seconds of an Orthanc job timestamp (``20261121T135445.209129``, UTC)."""
    return datetime.strptime(text, "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Case:
    """A kind of study, the template dataset and the results that must come back."""

    name: str
    template: Any  # pydicom Dataset
    expected: dict[str, int]
    description: str


def fresh_copy(template: Any) -> Any:
    """A copy of a dataset with new Study, Series and SOP Instance UIDs."""
    from dicom_service.uids import new_uid

    ds = copy.deepcopy(template)
    uid = new_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    return ds


def one_run(case: Case, orthanc: Any, node: Any, folder: Path) -> dict[str, float]:
    """Send one new study of ``case`` into Orthanc and time it until its results are back."""
    from tests.builders import save
    from tests.integration.orthanc import ORTHANC_AET, result_instances
    from tests.integration.tools import storescu, wait_until

    ds = fresh_copy(case.template)
    study_uid = str(ds.StudyInstanceUID)
    path = save(ds, folder / f"{case.name}-{study_uid}.dcm")
    jobs_before = {job["ID"] for job in orthanc.jobs()}

    start = time.time()
    storescu([path], orthanc.dicom_port, called_aet=ORTHANC_AET)
    sent = time.time()

    def complete() -> bool:
        found = result_instances(orthanc, study_uid)
        return all(len(found.get(kind, [])) >= n for kind, n in case.expected.items())

    def alive() -> None:
        orthanc.check_alive()
        node.check_alive()

    wait_until(complete, 600, interval=POLL_S, alive=alive, what=f"{case.name} results")
    done = time.time()

    store_jobs = [j for j in orthanc.jobs() if j["ID"] not in jobs_before and j["Type"] == "DicomModalityStore"]
    if len(store_jobs) != 1:
        raise RuntimeError(f"expected one Orthanc store job toward the node, got {len(store_jobs)}")
    store_job = store_jobs[0]
    process = [j for j in node.jobs(kind="process") if j["study_uid"] == study_uid]
    dispatch = [j for j in node.jobs(kind="dispatch") if j["study_uid"] == study_uid]
    if len(process) != 1 or len(dispatch) != 1:
        raise RuntimeError(f"expected one process and one dispatch job, got {len(process)}/{len(dispatch)}")
    process_job = node.job(process[0]["id"])
    # The results can be in Orthanc a moment before the dispatch job records its success.
    dispatch_job = wait_until(lambda: (j := node.job(dispatch[0]["id"]))["state"] == "succeeded" and j,
                              30, interval=POLL_S, what="the dispatch job to succeed")

    def attempt_seconds(job: dict[str, Any]) -> float:
        last = job["attempt_log"][-1]
        return float(last["finished_at"] - last["started_at"])

    orthanc_created = orthanc_time(store_job["CreationTime"])
    orthanc_completed = orthanc_time(store_job["CompletionTime"])
    orthanc_quiet = orthanc_created - sent
    node_quiet = float(process_job["created_at"]) - orthanc_completed
    if not (0 <= orthanc_quiet < 120 and -1 < node_quiet < 120):
        raise RuntimeError(f"implausible windows (clock or time-zone mismatch?): Orthanc {orthanc_quiet:.3f} s, "
                           f"node {node_quiet:.3f} s")
    total = done - start
    return {
        "total_s": total,
        "storescu_into_orthanc_s": sent - start,
        "orthanc_quiet_s": orthanc_quiet,
        "orthanc_to_node_transfer_s": orthanc_completed - orthanc_created,
        "node_quiet_s": node_quiet,
        "processing_s": attempt_seconds(process_job),
        "dispatch_s": attempt_seconds(dispatch_job),
        "turnaround_excluding_quiet_s": total - orthanc_quiet - node_quiet,
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Median of every measured quantity, plus the raw runs."""
    keys = runs[0].keys()
    return {
        "median": {k: round(median([r[k] for r in runs]), 3) for k in keys},
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="counted runs per case (median reported)")
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--video-width", type=int, default=640)
    parser.add_argument("--video-height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--cases", nargs="+", choices=("radiograph", "video"), default=["radiograph", "video"])
    args = parser.parse_args(argv)

    from tests.builders import make_intraoral_radiograph, make_video_photographic
    from tests.integration.node import NodeProcess
    from tests.integration.orthanc import OrthancServer
    from tests.integration.tools import free_port, require_tool

    frames = round(args.video_seconds * args.fps)
    cases = {
        "radiograph": Case("radiograph", make_intraoral_radiograph(implants=2, seed=3),
                           {"sr": 1, "seg": 1, "pr": 1, "sc": 1},
                           "one 416x416 12-bit intra-oral radiograph, 2 implants"),
        "video": Case("video", make_video_photographic(frames=frames, rows=args.video_height,
                                                       cols=args.video_width, fps=args.fps, seed=5),
                      {"video": 1, "seg": 1, "sr": 1},
                      f"{args.video_seconds:g} s {args.video_width}x{args.video_height} "
                      f"{args.fps:g} fps H.264 Video Photographic ({frames} frames)"),
    }
    warmups = {
        "radiograph": cases["radiograph"],
        "video": Case("video-warmup", make_video_photographic(frames=30, rows=240, cols=320, seed=6),
                      {"video": 1, "seg": 1, "sr": 1}, "warm-up"),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-turnaround-") as tmp:
        work = Path(tmp)
        pacs_port = free_port()
        node = NodeProcess(work / "node", destination_port=pacs_port, stability_seconds=NODE_STABILITY_S)
        orthanc = OrthancServer(work / "orthanc", node_port=node.dicom_port, dicom_port=pacs_port,
                                stable_age=ORTHANC_STABLE_AGE_S)
        try:
            orthanc.start()
            node.start()
            for name in args.cases:
                one_run(warmups[name], orthanc, node, work)
                log(f"{name}: warm-up done")
                runs = []
                for repeat in range(args.repeats):
                    run = one_run(cases[name], orthanc, node, work)
                    runs.append(run)
                    log(f"{name} {repeat + 1}/{args.repeats}: total {run['total_s']:.2f} s, "
                        f"excluding quiet windows {run['turnaround_excluding_quiet_s']:.2f} s")
                results[name] = {"input": cases[name].description, "results": cases[name].expected,
                                 **summarise(runs)}
        finally:
            node.stop()
            orthanc.stop()
    report = {
        "benchmark": "turnaround",
        "repeats": args.repeats,
        "statistic": "median seconds over the counted runs (one warm-up run per case not counted)",
        "hardware": hardware(),
        "tools": {"orthanc": tool_version(require_tool("Orthanc", "orthanc")),
                  "storescu": tool_version(require_tool("storescu", "dcmtk"))},
        "configured_windows": {"orthanc_stable_age_s": ORTHANC_STABLE_AGE_S,
                               "node_stability_seconds": NODE_STABILITY_S,
                               "result_poll_interval_s": POLL_S},
        "method": (
            "total_s = storescu start -> every expected result present in Orthanc (REST polled "
            "every 50 ms). Subtracted, as measured on each run: orthanc_quiet_s = storescu end -> "
            "CreationTime of Orthanc's store job to the node (StableAge window + monitor granularity); "
            "node_quiet_s = CompletionTime of that job -> created_at of the node's processing job "
            "(stability window + router wake-up). turnaround_excluding_quiet_s = total_s - both. "
            "Node: python -m dicom_service serve, device cpu, models.precision auto, fsync on, "
            "1 processing + 1 dispatch worker."
        ),
        "node_video_precision": _node_video_precision(),
        "cases": results,
    }
    print(json.dumps(report, indent=2))
    return 0


def _node_video_precision() -> str:
    """The compute precision the node's learned video runtime picks here (``auto`` on the CPU)."""
    from dicom_service.vision.precision import inference_dtype, precision_name

    return precision_name(inference_dtype("cpu"))


if __name__ == "__main__":
    sys.exit(main())
