"""Offline mode: ``dicom-service process PATH... --out DIR``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom

from tests import builders


def test_process_folder_writes_results_and_summary(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    # training-style phantoms: the default radiograph runtime is the bundled implant model
    radiograph, _ = builders.make_periapical_phantom_with_truth(seed=10_001, implants=2)
    empty, _ = builders.make_periapical_phantom_with_truth(seed=10_020, implants=0)
    video = builders.make_video_photographic(frames=6, rows=120, cols=160)
    for name, ds in (("a.dcm", radiograph), ("b.dcm", empty), ("c/v.dcm", video)):
        builders.save(ds, inputs / name)
    (inputs / "junk.bin").write_bytes(builders.non_dicom_bytes())
    (inputs / "cut.dcm").write_bytes(builders.truncated_bytes(builders.make_intraoral_radiograph(seed=7)))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_service", "process", str(inputs), "--out", str(out), "--no-progress",
         "--data", str(tmp_path / "var")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["inputs"] == 5
    summary = json.loads((out / "summary.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert "junk.bin" in reasons and "cut.dcm" in reasons
    workflows = sorted(g["workflow"] for g in summary["groups"])
    assert workflows.count("radiograph") >= 1 and workflows.count("video") == 1
    files = [Path(p) for p in summary["outputs"]]
    assert files and all(p.is_file() for p in files)
    kinds = {p.name.split("-")[0] for p in files}
    assert {"sr", "pr", "sc", "seg", "video"} <= kinds
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.PatientID == builders.PATIENT_ID
    radiograph_groups = [g for g in summary["groups"] if g["workflow"] == "radiograph"]
    instances = {i["sop_instance_uid"]: i for g in radiograph_groups for i in g["summary"]["instances"]}
    assert len(instances[str(radiograph.SOPInstanceUID)]["implants"]) == 2
    assert instances[str(empty.SOPInstanceUID)]["none_found"] is True


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_service", "process", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "no such file or folder" in proc.stderr


def test_video_over_the_memory_budget_is_an_error_entry(tmp_path: Path) -> None:
    """Offline mode applies workers.video_memory_mb too: the video gets a clear error entry
    and no output, and the run goes on."""
    from dicom_service.config import load_settings
    from dicom_service.offline import process_paths

    video = builders.make_video_photographic(frames=4, rows=64, cols=96)
    builders.save(video, tmp_path / "in" / "v.dcm")
    settings = load_settings(None, storage={"path": str(tmp_path / "var")}, workers={"video_memory_mb": 1},
                             models={"video": "baseline"})
    report = process_paths([tmp_path / "in"], tmp_path / "out", settings, show_progress=False)
    (group,) = report.groups
    assert group["workflow"] == "video" and not group["outputs"]
    (error,) = group["errors"]
    assert error["sop_instance_uid"] == str(video.SOPInstanceUID)
    assert error["error"].startswith("UnsupportedInputError: video too large")


def _process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicom_service", "process", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300)


def test_out_inside_an_input_folder_is_never_read_as_input(tmp_path: Path) -> None:
    """Run twice with --out inside the input folder: the second run reads the one input
    again, not the first run's results (which it would enhance again)."""
    study = tmp_path / "study"
    builders.save(builders.make_intraoral_radiograph(seed=7), study / "r.dcm")
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  radiograph: baseline\n  video: baseline\n")
    lines = []
    for _ in range(2):
        proc = _process(str(study), "--out", str(study / "results"), "--config", str(config))
        assert proc.returncode == 0, proc.stderr
        lines.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = lines
    assert first["outputs"] > 0
    assert second["inputs"] == first["inputs"] == 1 and second["skipped"] == 0
    assert second["groups"] == 1 and second["outputs"] == first["outputs"]


def test_iter_files_leaves_out_the_excluded_folder(tmp_path: Path) -> None:
    from dicom_service.offline import iter_files

    for name in ("a.dcm", "out/x.dcm", "out/deep/y.dcm", "outer/z.dcm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in iter_files([tmp_path], exclude=tmp_path / "out")]
    assert names == ["a.dcm", "outer/z.dcm"]
    assert list(iter_files([tmp_path / "out" / "x.dcm"], exclude=tmp_path / "out")) == []


def test_out_that_is_a_file_exits_2_before_models_load(tmp_path: Path) -> None:
    radiograph = builders.save(builders.make_intraoral_radiograph(seed=7), tmp_path / "r.dcm")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    for out in (blocker, blocker / "results"):
        proc = _process(str(radiograph), "--out", str(out))
        assert proc.returncode == 2
        assert f"output folder: cannot create the folder {out}: {blocker} is a file" in proc.stderr
        assert "Traceback" not in proc.stderr and "vision runtimes" not in proc.stderr


def test_every_input_skipped_says_so(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.bin").write_bytes(builders.non_dicom_bytes())
    proc = _process(str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0
    assert "nothing processed: 1 of 1 input files skipped" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["groups"] == 0
