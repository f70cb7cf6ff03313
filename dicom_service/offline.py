"""Offline mode: the same pipelines on DICOM files or folders, with no network."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from dicom_service.config import Settings, make_folder
from dicom_service.domain import InputError, InstanceMeta, Workflow
from dicom_service.malloc_tuning import set_mmap_threshold
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.media.pixels import check_pixel_consistency
from dicom_service.pipelines.base import PipelineOutput
from dicom_service.pipelines.radiograph import process_radiographs
from dicom_service.pipelines.video import process_videos
from dicom_service.pipelines.video_memory import video_budget_bytes
from dicom_service.routing import choose_workflow, default_rules, job_key
from dicom_service.service import Runtimes
from dicom_service.uids import validate_uid

log = logging.getLogger(__name__)


@dataclass
class OfflineReport:
    """What :func:`process_paths` did; written as ``summary.json``."""

    inputs: int = 0
    skipped: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True if any instance failed to process."""
        return any(g.get("errors") for g in self.groups)


def iter_files(paths: Sequence[Path], exclude: Path | None = None) -> Iterable[Path]:
    """Every file under the given files and folders, sorted, recursively, except those under
    ``exclude`` (the output folder, which may lie inside an input folder: a second run must
    not read the first one's results as input)."""
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
        yield from (p for p in files if skip is None or not p.resolve().is_relative_to(skip))


def _meta(ds: Dataset, path: Path) -> InstanceMeta:
    return InstanceMeta(
        study_uid=validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series_uid=validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        sop_instance_uid=validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
        sop_class_uid=validate_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        modality=str(ds.get("Modality", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        calling_ae="",
        path=path,
    )


def _run(workflow: Workflow, ds: Dataset, runtimes: Runtimes, key: str, progress,  # noqa: ANN001
         video_memory_mb: int = 0) -> PipelineOutput:
    if workflow is Workflow.VIDEO:
        return process_videos([ds], runtimes.video, uid_seed=key, progress=progress,
                              memory_budget=video_budget_bytes(video_memory_mb, 1))
    return process_radiographs([ds], runtimes.radiograph, uid_seed=key, progress=progress)


def process_paths(paths: Sequence[Path], out_dir: Path, settings: Settings, *,
                  show_progress: bool = True) -> OfflineReport:
    """Route and process files, write result objects under ``out_dir``.

    Result files are written as ``out_dir/<study>/<kind>-<SOP Instance UID>.dcm``
    and the report as ``out_dir/summary.json``; nothing under ``out_dir`` is read as input,
    and ``out_dir`` is created (or found to be blocked by a file: :class:`~dicom_service.domain.ConfigError`)
    before any input is read or model loaded. Files are read as the service reads its
    stored instances: headers in memory, pixel data left in the file until a pipeline
    decodes it (a long video's bitstream is streamed to the decoder from disk), so a
    folder of large files is not held in memory while it waits its turn.
    """
    make_folder(out_dir, "output folder")
    set_mmap_threshold(settings.workers.malloc_mmap_threshold_kb * 1024)
    rules = list(settings.routing.rules) if settings.routing.rules is not None else default_rules()
    report = OfflineReport()
    groups: dict[tuple[str, Workflow], list[tuple[InstanceMeta, Dataset]]] = {}
    for path in iter_files(paths, exclude=out_dir):
        report.inputs += 1
        try:
            ds = dcmread(path, defer_size=DEFER_BYTES)  # pixel data stays in the file, as in the service
            meta = _meta(ds, path)
            check_pixel_consistency(ds)
        except (InvalidDicomError, InputError, ValueError, OSError, EOFError) as exc:
            report.skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
            log.warning("skipped %s: %s", path.name, type(exc).__name__)
            continue
        workflow = choose_workflow(meta, rules, settings.routing.default_workflow)
        if workflow is Workflow.IGNORE:
            report.skipped.append({"path": str(path), "reason": "routing: ignore"})
            continue
        groups.setdefault((meta.study_uid, workflow), []).append((meta, ds))
    runtimes = Runtimes(settings) if groups else None
    bar = tqdm(total=len(groups), desc="processing", unit="group", disable=not show_progress)
    for (study_uid, workflow), members in groups.items():
        key = job_key(study_uid, workflow, [m.sop_instance_uid for m, _ in members])
        entry: dict = {"study_uid": study_uid, "workflow": workflow.value, "instances": len(members),
                       "summary": {"instances": []}, "errors": [], "outputs": []}
        folder = out_dir / study_uid
        for meta, ds in members:  # one at a time: a bad instance does not sink its study
            try:
                output = _run(workflow, ds, runtimes, key, bar.set_postfix_str, settings.workers.video_memory_mb)
            except InputError as exc:
                entry["errors"].append({"sop_instance_uid": meta.sop_instance_uid,
                                        "error": f"{type(exc).__name__}: {exc}"})
                log.warning("instance %s failed: %s", meta.sop_instance_uid, type(exc).__name__)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for obj in output.objects:
                target = folder / f"{obj.kind}-{obj.sop_instance_uid}.dcm"
                with open(target, "wb") as fh:
                    obj.write(fh)
                entry["outputs"].append(str(target))
            entry["summary"]["instances"].extend(output.summary["instances"])
        report.outputs.extend(entry["outputs"])
        report.groups.append(entry)
        bar.update(1)
    bar.close()
    (out_dir / "summary.json").write_text(json.dumps(vars(report), indent=2, default=str))
    return report
