"""TID 1500 Measurement Reports: implants found on a radiograph, and what was done to a
video.

SOP class: Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34) by default, as the IHE
AI Results profile asks; ``comprehensive_3d=False`` writes Comprehensive SR
(1.2.840.10008.5.1.4.1.1.88.33) with the same content (we only use 2-D SCOORD, which
both allow) for archives that do not accept the 3D class. Root: (126000, DCM,
"Imaging Measurement Report"), observer = the algorithm as a device (TID 1004).

Implant report content
    One TID 1410 group per implant: Tracking Identifier ``"Implant <n>"`` + Tracking
    Unique Identifier; Finding Category (260787004 Physical object); Finding
    (40388003 Implant); TID 4019 Algorithm Identification; Image Region = closed
    5-point POLYLINE ``(x0,y0) (x1,y0) (x1,y1) (x0,y1) (x0,y0)`` (SCOORD column\\row,
    0\\0 = top-left corner of the top-left pixel, so box edges map 1:1); NUM
    (111012, DCM, "Certainty of Finding") = detection score, unit (1, UCUM, "no
    units"); if a system is known TEXT (113879, DCM, "Device Model Name") = top system
    and NUM (SYSTEMPROB, 99DENTALAI, "Implant system probability"), then one TEXT
    (SYSTEMCAND, 99DENTALAI, "Implant system candidate") ``"<rank>. <name> (p=<p>)"``
    per ranked system the runtime reports (the top 3); one TEXT
    (IMPLANTDESIGN, 99DENTALAI, "Implant design attribute") ``"<key>: <value>"`` per
    design attribute. Each part is its own TID 1410 group (Finding (IMPLANTPART,
    99DENTALAI, "Dental implant part"), TEXT (PARTLABEL, 99DENTALAI, "Implant part
    label"), its certainty), tracked as ``"Implant <n> part <label>"``.
    No findings: one TID 1501 group ``"No implant found"`` with the qualitative
    evaluation (40388003, SCT, Implant) = (2667000, SCT, Absent) on the source image.
Video report content
    Procedure reported: (197157006, SCT, "Photography of patient") and (110001, DCM,
    "Image Processing"); one TID 1501 group on the source video with TEXT
    (PROCSTEP, 99DENTALAI, "Processing step") per step in order and one NUM per metric
    (code = the metric name in 99DENTALAI; unit from its suffix). The source, the
    enhanced video and the SEG are listed as evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_service.domain import AlgorithmInfo, EnhancementOutcome, ImplantFinding, RadiographResult
from dicom_service.writers import common

IMPLANT_REPORT_SERIES_NUMBER = 9003
VIDEO_REPORT_SERIES_NUMBER = 9103

RADIOGRAPHY_OF_TEETH = Code("22891007", "SCT", "Radiography of teeth")
PHOTOGRAPHY_OF_PATIENT = Code("197157006", "SCT", "Photography of patient")
IMAGE_PROCESSING = Code("110001", "DCM", "Image Processing")
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
DEVICE_MODEL_NAME = Code("113879", "DCM", "Device Model Name")
SYSTEM_PROBABILITY = Code("SYSTEMPROB", common.PRIVATE_SCHEME, "Implant system probability")
SYSTEM_CANDIDATE = Code("SYSTEMCAND", common.PRIVATE_SCHEME, "Implant system candidate")
DESIGN_ATTRIBUTE = Code("IMPLANTDESIGN", common.PRIVATE_SCHEME, "Implant design attribute")
PART_LABEL = Code("PARTLABEL", common.PRIVATE_SCHEME, "Implant part label")
PROCESSING_STEP = Code("PROCSTEP", common.PRIVATE_SCHEME, "Processing step")
REVIEW_NOTE = Code("REVIEWNOTE", common.PRIVATE_SCHEME, "Review note")
NO_UNITS = Code("1", "UCUM", "no units")

_UNIT_SUFFIXES = {
    "_px": Code("{pixels}", "UCUM", "pixels"),
    "_pixels": Code("{pixels}", "UCUM", "pixels"),
    "_ms": Code("ms", "UCUM", "millisecond"),
    "_s": Code("s", "UCUM", "second"),
    "_db": Code("dB", "UCUM", "decibel"),
    "_percent": Code("%", "UCUM", "percent"),
    "_pct": Code("%", "UCUM", "percent"),
    "_fps": Code("/s", "UCUM", "per second"),
}


def write_implant_report(
    source: Dataset,
    result: RadiographResult,
    *,
    segmentation: Dataset | None = None,
    uid_seed: str | None = None,
    series_number: int = IMPLANT_REPORT_SERIES_NUMBER,
    comprehensive_3d: bool = True,
    reviewer: str | None = None,
    ai_findings: Sequence[int | None] | None = None,
    ai_uid_seed: str | None = None,
) -> Dataset:
    """Write the TID 1500 report of the implants found (or not) on a radiograph.

    Parameters
    ----------
    source : Dataset
        The single-frame radiograph the result was computed on.
    result : RadiographResult
        Findings with boxes ``(x0, y0, x1, y1)`` in source pixels (x = column,
        y = row); ``result.image_shape`` must equal ``(Rows, Columns)``.
    segmentation : Dataset, optional
        The implant SEG written for the same result; listed as evidence.
    uid_seed : str, optional
        Seed for deterministic UIDs (also of the Tracking Unique Identifiers).
    series_number : int
        Series Number of the new series.
    comprehensive_3d : bool
        Comprehensive 3D SR (default) or Comprehensive SR.
    reviewer : str, optional
        For findings a dentist reviewed (doctor-in-the-loop): their name as DICOM writes
        it (``""`` when unknown). The report is then "AI implant report, corrected"; a
        named reviewer is a person observer beside the algorithm; each implant gets a
        TEXT (REVIEWNOTE, 99DENTALAI, "Review note") saying whether the reviewer kept or
        drew it and named its system. A drawn implant (``origin`` "person") has no
        Certainty of Finding, and a system the reviewer named no probability or
        candidates.
    ai_findings : sequence of int or None, optional
        For a reviewed report: per finding, the number of the AI's finding it keeps (None
        for one the reviewer drew), named in its review note.
    ai_uid_seed : str, optional
        The ``uid_seed`` of the AI's own report: a kept finding (and its parts) then has
        the AI report's Tracking Unique Identifier, so a viewer links the two.

    Returns
    -------
    Dataset
        Complete SR instance with file meta.

    Raises
    ------
    ValueError
        If the image shape does not match the source, or a box is empty or outside it.
    """
    rows, cols = int(source.Rows), int(source.Columns)
    if tuple(result.image_shape) != (rows, cols):
        raise ValueError(
            f"result.image_shape {tuple(result.image_shape)} does not match the source "
            f"image (Rows, Columns) = ({rows}, {cols})"
        )
    uids = common.object_uids(uid_seed, "sr/implant")
    algorithm_id = common.sr_algorithm_identification(result.algorithm)
    groups: list = []
    ai_uids = common.object_uids(ai_uid_seed, "sr/implant") if ai_uid_seed is not None else None
    for number, finding in enumerate(result.findings, start=1):
        ai_number = ai_findings[number - 1] if ai_findings else None
        tracked = (ai_uids, ai_number) if ai_uids is not None and ai_number is not None else (uids, number)
        groups.extend(_finding_groups(source, number, finding, algorithm_id, tracked, reviewer, ai_number))
    if not result.findings:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.derive("tracking/none"), identifier="No implant found"
                ),
                algorithm_id=algorithm_id,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(common.IMPLANT, common.ABSENT)],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    evidence = [source] + ([segmentation] if segmentation is not None else [])
    report = _report(
        evidence=evidence,
        procedures=[RADIOGRAPHY_OF_TEETH],
        groups=groups,
        algorithm=result.algorithm,
        uids=uids,
        series_number=series_number,
        description="AI implant report" if reviewer is None else "AI implant report, corrected",
        comprehensive_3d=comprehensive_3d,
        person=reviewer or None,
    )
    if reviewer:  # the reviewer's name is in the observer context and the review notes
        common.make_room_for(report, reviewer)
    return report


def review_note(finding: ImplantFinding, reviewer: str, ai_number: int | None = None) -> str:
    """What a reviewer did with one implant, in a sentence (at most 1024 characters);
    ``ai_number``: the number of the AI's finding it keeps, if known."""
    who = reviewer or "the reviewer"
    found = "Found by the AI" if ai_number is None else f"Found by the AI (its implant {ai_number})"
    note = f"Drawn by {who}" if finding.origin == "person" else f"{found}, kept by {who}"
    if finding.system_by_person:
        note += f"; system named by {who}"
    elif finding.system_top:
        note += "; system by the AI's identifier"
    return note


def write_video_report(
    source: Dataset,
    enhancement: EnhancementOutcome,
    *,
    derived: Sequence[Dataset],
    uid_seed: str | None = None,
    series_number: int = VIDEO_REPORT_SERIES_NUMBER,
    comprehensive_3d: bool = True,
    description: str = "AI video enhancement report",
) -> Dataset:
    """Write the TID 1500 summary of the enhancement of an intra-oral video.

    Parameters
    ----------
    source : Dataset
        The original video (or photo).
    enhancement : EnhancementOutcome
        ``steps`` become TEXT items in order, ``metrics`` NUM items (unit inferred
        from the name suffix: ``_px`` pixels, ``_ms``, ``_s``, ``_db``, ``_percent``,
        ``_fps``; otherwise no units). Pixel arrays are not used here.
    derived : sequence of Dataset
        Objects written from this enhancement (enhanced video, tooth SEG); they
        must belong to the source's study and are listed as evidence.
    uid_seed : str, optional
        Seed for deterministic UIDs.
    series_number : int
        Series Number of the new series.
    comprehensive_3d : bool
        Comprehensive 3D SR (default) or Comprehensive SR.
    description : str
        Series Description.

    Raises
    ------
    ValueError
        If a derived object belongs to another study, or a metric is not finite.
    """
    for ds in derived:
        if ds.StudyInstanceUID != source.StudyInstanceUID:
            raise ValueError(
                f"derived object {ds.SOPInstanceUID} belongs to another study than the source"
            )
    uids = common.object_uids(uid_seed, "sr/video")
    measurements = []
    for name, value in enhancement.metrics.items():
        if not np.isfinite(value):
            raise ValueError(f"metric {name!r} is not a finite number")
        measurements.append(
            hd.sr.Measurement(name=_metric_code(name), value=float(value), unit=_metric_unit(name))
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.derive("tracking/video"), identifier="Video enhancement"
        ),
        algorithm_id=common.sr_algorithm_identification(enhancement.algorithm),
        measurements=measurements or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    _append_texts(group, [(PROCESSING_STEP, step) for step in enhancement.steps])
    return _report(
        evidence=[source, *derived],
        procedures=[PHOTOGRAPHY_OF_PATIENT, IMAGE_PROCESSING],
        groups=[group],
        algorithm=enhancement.algorithm,
        uids=uids,
        series_number=series_number,
        description=description,
        comprehensive_3d=comprehensive_3d,
    )


# --------------------------------------------------------------------------- helpers
def box_polyline(box: tuple[float, float, float, float]) -> np.ndarray:
    """Closed 5-point polyline ``(5, 2)`` float32 of (column, row) points of a box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _region(source: Dataset, box: tuple[float, float, float, float]) -> hd.sr.ImageRegion:
    rows, cols = int(source.Rows), int(source.Columns)
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows):
        raise ValueError(f"box {tuple(box)} is empty or outside the {cols}x{rows} image")
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(box),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )


def _finding_groups(
    source: Dataset,
    number: int,
    finding: ImplantFinding,
    algorithm_id: hd.sr.AlgorithmIdentification,
    tracked: tuple[common.ObjectUIDs, int],
    reviewer: str | None = None,
    ai_number: int | None = None,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The TID 1410 group of implant ``number``, followed by one group per part; their
    Tracking Unique Identifiers derive from ``tracked`` (the UIDs and the number of the
    report they were first made in)."""
    uids, tracking = tracked
    drawn = finding.origin == "person"
    measurements = [] if drawn else [hd.sr.Measurement(CERTAINTY_OF_FINDING, float(finding.score), NO_UNITS)]
    texts: list[tuple[Code, str]] = []
    if finding.system_top:
        name, probability = finding.system_top[0]
        texts.append((DEVICE_MODEL_NAME, name))
        if not finding.system_by_person:
            measurements.append(hd.sr.Measurement(SYSTEM_PROBABILITY, float(probability), NO_UNITS))
            texts.extend((SYSTEM_CANDIDATE, f"{rank}. {candidate} (p={p:.3f})")
                         for rank, (candidate, p) in enumerate(finding.system_top, start=1))
    texts.extend((DESIGN_ATTRIBUTE, f"{key}: {value}") for key, value in finding.attributes.items())
    if reviewer is not None:
        texts.append((REVIEW_NOTE, review_note(finding, reviewer, ai_number)))
    # a drawn box whose system the reviewer named owes the algorithm nothing
    by_algorithm = not drawn or bool(finding.attributes) or (bool(finding.system_top) and not finding.system_by_person)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.derive(f"tracking/{tracking}"), identifier=f"Implant {number}"
        ),
        referenced_region=_region(source, finding.box),
        finding_type=common.IMPLANT,
        finding_category=common.PHYSICAL_OBJECT,
        algorithm_id=algorithm_id if by_algorithm else None,
        measurements=measurements or None,
    )
    _append_texts(group, texts)
    groups = [group]
    for part_index, part in enumerate(finding.parts, start=1):
        part_group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uids.derive(f"tracking/{tracking}/part/{part_index}"),
                identifier=f"Implant {number} part {part.label}"[:64],
            ),
            referenced_region=_region(source, part.box),
            finding_type=common.IMPLANT_PART,
            finding_category=common.PHYSICAL_OBJECT,
            algorithm_id=algorithm_id,
            measurements=[hd.sr.Measurement(CERTAINTY_OF_FINDING, float(part.score), NO_UNITS)],
        )
        _append_texts(part_group, [(PART_LABEL, part.label)])
        groups.append(part_group)
    return groups


def _append_texts(group: hd.sr.Template, texts: Sequence[tuple[Code, str]]) -> None:
    """Append TEXT content items (CONTAINS) to the group's container."""
    if not texts:
        return
    container = group[0]
    content = container.ContentSequence
    for name, value in texts:
        content.append(
            hd.sr.TextContentItem(
                name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )


def _metric_code(name: str) -> hd.sr.CodedConcept:
    """Private code for a metric: the name itself (long names use Long Code Value)."""
    if not name or len(name) > 64:
        raise ValueError(f"metric name must have 1 to 64 characters, got {len(name)}")
    return hd.sr.CodedConcept(
        value=name, scheme_designator=common.PRIVATE_SCHEME, meaning=name.replace("_", " ")[:64]
    )


def _metric_unit(name: str) -> Code:
    lowered = name.lower()
    for suffix, unit in _UNIT_SUFFIXES.items():
        if lowered.endswith(suffix):
            return unit
    return NO_UNITS


def _report(
    *,
    evidence: list[Dataset],
    procedures: list[Code],
    groups: list,
    algorithm: AlgorithmInfo,
    uids: common.ObjectUIDs,
    series_number: int,
    description: str,
    comprehensive_3d: bool,
    person: str | None = None,
) -> Dataset:
    """Wrap measurement groups into a TID 1500 document and finish the dataset (``person``:
    a person observer's name, beside the algorithm as the device observer)."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=common.algorithm_device_uid(algorithm),
            name=algorithm.name[:64],
            manufacturer_name=common.MANUFACTURER,
            model_name=common.MODEL_NAME,
            serial_number=common.DEVICE_SERIAL_NUMBER,
        ),
    )
    person_context = None if person is None else hd.sr.ObserverContext(
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=person),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person_context,
                                                     observer_device_context=observer),
        procedure_reported=procedures,
        imaging_measurements=groups,
    )
    cls = hd.sr.Comprehensive3DSR if comprehensive_3d else hd.sr.ComprehensiveSR
    sr = cls(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.series,
        series_number=series_number,
        sop_instance_uid=uids.instance,
        instance_number=1,
        manufacturer=common.MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=description,
        manufacturer_model_name=common.MODEL_NAME,
        software_versions=common.SOFTWARE_VERSION,
        device_serial_number=common.DEVICE_SERIAL_NUMBER,
    )
    common.add_algorithm_equipment(sr, algorithm)
    common.add_private_schemes(sr, {common.PRIVATE_SCHEME})
    return sr
