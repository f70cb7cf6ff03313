"""Radiograph workflow: load → implant detection → result objects.

For each radiograph:

* a TID 1500 Structured Report with one finding per implant, or an explicit
  "none found";
* a Segmentation of the implants (only when there are findings);
* a Grayscale Softcopy Presentation State with the boxes;
* a Secondary Capture with the boxes burned in, for viewers without SR/PR support.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_service.domain import ImplantFinding, RadiographResult
from dicom_service.media.pixels import load_radiograph
from dicom_service.pipelines.base import PipelineOutput, ProgressLog, ResultObject, no_log
from dicom_service.vision.runtime import RadiographRuntime
from dicom_service.writers.pr import write_implant_presentation_state
from dicom_service.writers.sc import render_findings, write_secondary_capture
from dicom_service.writers.seg import write_implant_segmentation
from dicom_service.writers.sr import write_implant_report

BURNED_IN_SERIES = 9201


def finding_summary(finding: ImplantFinding) -> dict:
    """One finding as a job's summary reports it: box (x0, y0, x1, y1 pixels, 0.1 px),
    score, part labels, design attributes and ranked systems with probabilities."""
    return {"box_xyxy": [round(float(v), 1) for v in finding.box], "score": round(float(finding.score), 4),
            "parts": [p.label for p in finding.parts], "attributes": finding.attributes,
            "system_top": [[name, round(p, 4)] for name, p in finding.system_top]}


def _finding_summary(result: RadiographResult) -> list[dict]:
    return [finding_summary(f) for f in result.findings]


def process_radiograph_instance(
    source: Dataset, runtime: RadiographRuntime, *, uid_seed: str, progress: ProgressLog = no_log
) -> tuple[list[ResultObject], dict]:
    """Run the radiograph workflow on one instance; returns objects and a summary."""
    sop = str(source.SOPInstanceUID)
    image = load_radiograph(source)
    progress(f"{sop}: loaded {image.shape[1]}x{image.shape[0]} radiograph")
    result = runtime.detect(image)
    progress(f"{sop}: {len(result.findings)} implant(s) found by {result.algorithm.name}")
    seed = f"{uid_seed}/{sop}"
    objects: list[ResultObject] = []
    seg = None
    if result.findings:
        seg = write_implant_segmentation(source, result, uid_seed=f"{seed}/seg")
        objects.append(ResultObject("seg", seg))
    objects.append(ResultObject("sr", write_implant_report(source, result, segmentation=seg,
                                                           uid_seed=f"{seed}/sr")))
    objects.append(ResultObject("pr", write_implant_presentation_state(source, result,
                                                                       uid_seed=f"{seed}/pr")))
    burned = write_secondary_capture(
        source, render_findings(image, result.findings),
        description="AI implant findings (burned in)", series_number=BURNED_IN_SERIES,
        uid_seed=f"{seed}/sc", burned_in_annotation=True, algorithm=result.algorithm,
        derivation_description="implant detection boxes burned in",
    )
    objects.append(ResultObject("sc", burned))
    summary = {
        "sop_instance_uid": sop, "rows": int(image.shape[0]), "columns": int(image.shape[1]),
        "algorithm": result.algorithm.name, "implants": _finding_summary(result),
        "none_found": not result.findings,
    }
    return objects, summary


def process_radiographs(
    sources: Sequence[Dataset], runtime: RadiographRuntime, *, uid_seed: str,
    progress: ProgressLog = no_log,
) -> PipelineOutput:
    """Run the radiograph workflow on every source instance of a job."""
    output = PipelineOutput(summary={"workflow": "radiograph", "instances": []})
    for source in sources:
        objects, summary = process_radiograph_instance(source, runtime, uid_seed=uid_seed,
                                                       progress=progress)
        output.objects.extend(objects)
        output.summary["instances"].append(summary)
    return output
