"""Doctor-in-the-loop on radiographs: a dentist's review of the implants the AI found.

The dentist looks at the AI's implant findings on a radiograph (its report, presentation
state or burned-in capture) and answers with the implants as they see them, a list where
each item is one of:

- an AI finding kept (``finding``: its 1-based number, as the AI's report and boxes label
  it), optionally with the implant system the dentist knows it to be (``system``);
- an implant the AI missed: a box the dentist drew (``box``), whose system the node's
  identifier names (the learned runtime; the dentist may name it instead).

AI findings left out of the list are false alarms, dropped; an empty list says there is no
implant. :func:`correct_implants` builds the reviewed findings and writes them as the AI's
own results are written, in new series ("..., corrected"): a report (TID 1500 with the
dentist as a person observer beside the algorithm, and per implant who drew or confirmed
it), a presentation state, a Segmentation (when an implant remains) and a burned-in
capture. The AI's objects are left as they were.

The AI's findings are those the processing job reported. The runtime detects them again on
the radiograph, which gives the same findings (the models are deterministic) with their
parts; if the models changed since, the reported boxes stand, without their parts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset

from dicom_service.domain import ImplantFinding, ImplantPart, InputError, RadiographResult
from dicom_service.media.pixels import load_radiograph
from dicom_service.pipelines.base import ProgressLog, ResultObject, no_log
from dicom_service.pipelines.radiograph import finding_summary
from dicom_service.vision.runtime import RadiographRuntime
from dicom_service.writers.pr import write_implant_presentation_state
from dicom_service.writers.sc import render_findings, write_secondary_capture
from dicom_service.writers.seg import write_implant_segmentation
from dicom_service.writers.sr import write_implant_report

#: Series Numbers of the corrected objects (the AI's: SEG 9002, SR 9003, PR 9004, SC 9201).
CORRECTED_SEG_SERIES = 9012
CORRECTED_REPORT_SERIES = 9013
CORRECTED_PR_SERIES = 9014
CORRECTED_BURNED_IN_SERIES = 9202
#: Implants one review may list.
MAX_IMPLANTS = 64
#: A system name as a dentist may give it: printable ASCII without backslash, 1 to 64
#: characters, no space at either end (DICOM would drop it; it is also burned into the
#: capture's pixels, which only ASCII can be).
SYSTEM_NAME_PATTERN = r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,62}[\x21-\x5b\x5d-\x7e])?$"
SYSTEM_NAME = re.compile(SYSTEM_NAME_PATTERN)
#: The shortest side (pixels) of a box a dentist draws.
MIN_BOX_PIXELS = 2.0
#: How far (pixels) a box detected again may be from the reported one and still be it.
SAME_BOX_PIXELS = 0.5


@dataclass(frozen=True)
class ImplantEdit:
    """One implant of a review: an AI finding kept (``finding``) or a box drawn (``box``).

    Attributes
    ----------
    finding : int or None
        1-based number of the AI's finding (its report's "Implant <n>").
    box : tuple of float or None
        ``(x0, y0, x1, y1)`` in source pixels (x = column, y = row) of an implant the AI
        missed.
    system : str or None
        The implant system as the dentist names it; None: the AI's (or the identifier's
        for a drawn box).
    """

    finding: int | None = None
    box: tuple[float, float, float, float] | None = None
    system: str | None = None


@dataclass(frozen=True)
class ImplantReview:
    """A dentist's review of the implants on one radiograph.

    Attributes
    ----------
    implants : tuple of ImplantEdit
        The implants as the dentist sees them (empty: none).
    operator : str or None
        Who reviewed (a named user's name, DICOM PN); None: nobody named.
    """

    implants: tuple[ImplantEdit, ...]
    operator: str | None = None

    def key(self) -> str:
        """A short digest: the same review by the same person, in whatever order it lists
        the implants, gives the same key (and so the same job and UIDs). The implants are
        put in one order first (by their JSON); a review already in that order (one with a
        single implant, for one) keeps the key it had before order stopped mattering."""
        entries = sorted(([e.finding, None if e.box is None else [round(float(v), 3) for v in e.box], e.system]
                          for e in self.implants), key=json.dumps)
        doc = {"implants": entries, "operator": self.operator}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        """The review as JSON (a job's payload; :meth:`from_json` reads it)."""
        return {"implants": [{"finding": e.finding, "box": None if e.box is None else list(e.box),
                              "system": e.system} for e in self.implants], "operator": self.operator}

    @classmethod
    def from_json(cls, doc: dict) -> ImplantReview:
        """The review :meth:`to_json` wrote."""
        return cls(implants=tuple(ImplantEdit(finding=e.get("finding"),
                                              box=None if e.get("box") is None else tuple(float(v) for v in e["box"]),
                                              system=e.get("system")) for e in doc.get("implants", [])),
                   operator=doc.get("operator"))

    def check(self, findings: int, rows: int, columns: int) -> None:
        """Raise :class:`InputError` unless the review applies to a radiograph of ``rows``
        x ``columns`` on which the AI reported ``findings`` implants."""
        if len(self.implants) > MAX_IMPLANTS:
            raise InputError(f"at most {MAX_IMPLANTS} implants in one review, got {len(self.implants)}")
        kept = [e.finding for e in self.implants if e.finding is not None]
        if len(set(kept)) != len(kept):
            raise InputError("an AI finding is listed twice")
        for number, edit in enumerate(self.implants, start=1):
            if (edit.finding is None) == (edit.box is None):
                raise InputError(f"implant {number}: give either the AI's finding number or a box")
            if edit.finding is not None and not 1 <= edit.finding <= findings:
                raise InputError(f"implant {number}: the AI reported {findings} finding(s) (1 to {findings}), "
                                 f"not {edit.finding}")
            if edit.box is not None:
                x0, y0, x1, y1 = edit.box
                if not all(np.isfinite(edit.box)) or not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows):
                    raise InputError(f"implant {number}: box {list(edit.box)} must have 0 <= x0 < x1 <= {columns} "
                                     f"and 0 <= y0 < y1 <= {rows} (pixels of the radiograph)")
                if min(x1 - x0, y1 - y0) < MIN_BOX_PIXELS:
                    raise InputError(f"implant {number}: box {list(edit.box)} is less than {MIN_BOX_PIXELS:g} "
                                     "pixels on a side")
            if edit.system is not None and not SYSTEM_NAME.match(edit.system):
                raise InputError(f"implant {number}: a system name has 1 to 64 printable ASCII characters, "
                                 "no backslash, no space at either end")
        boxes = [tuple(round(float(v), 3) for v in e.box) for e in self.implants if e.box is not None]
        if len(set(boxes)) != len(boxes):  # as the key rounds them: 1/1000 pixel apart is the same box
            raise InputError("a box is drawn twice")

    def describe(self, ai_findings: int) -> str:
        """What the review did, in a few words (at most 64 characters)."""
        kept = sum(e.finding is not None for e in self.implants)
        drawn = sum(e.box is not None for e in self.implants)
        named = sum(e.system is not None for e in self.implants)
        parts = [f"{kept} of {ai_findings} AI finding(s) kept", f"{drawn} drawn"]
        if named:
            parts.append(f"{named} system(s) named")
        return ", ".join(parts)[:64]


@dataclass(frozen=True)
class ImplantCorrectionResult:
    """The corrected objects and what they hold."""

    objects: list[ResultObject]
    findings: list[ImplantFinding]
    summary: dict


def reported_findings(summary: dict) -> list[ImplantFinding]:
    """The findings a processing job reported for one radiograph (its summary's
    ``implants``), without their parts' boxes."""
    return [ImplantFinding(box=tuple(float(v) for v in item["box_xyxy"]), score=float(item["score"]),
                           attributes=dict(item.get("attributes") or {}),
                           system_top=tuple((str(n), float(p)) for n, p in item.get("system_top") or []))
            for item in summary.get("implants", [])]


def ai_findings(image: np.ndarray, runtime: RadiographRuntime, reported: list[ImplantFinding],
                parts: list[ImplantPart] | None = None) -> list[ImplantFinding]:
    """The AI's findings with their parts: ``runtime`` run again on ``image`` (on stage-1
    ``parts`` already detected, for the learned runtime) when it finds the boxes
    ``reported`` (within :data:`SAME_BOX_PIXELS`), else ``reported`` as it is."""
    again = (runtime.detect(image) if parts is None else runtime.detect(image, parts=parts)).findings  # type: ignore[call-arg]
    if len(again) == len(reported) and all(
            np.abs(np.subtract(a.box, r.box)).max() <= SAME_BOX_PIXELS for a, r in zip(again, reported, strict=True)):
        return again
    return reported


def drawn_finding(image: np.ndarray, runtime: RadiographRuntime, box: tuple[float, float, float, float],
                  parts: list[ImplantPart] | None = None) -> ImplantFinding:
    """An implant the dentist drew: with the learned runtime, the parts it detects in the
    box (which orient the implant: coronal end to apex) and the system and design its
    identifier gives the box (``identify_box``); with another runtime, the box alone."""
    identify = getattr(runtime, "identify_box", None)
    if identify is None:
        return ImplantFinding(box=box, score=1.0, origin="person")
    return replace(identify(image, box, parts=parts), origin="person")


def reviewed_findings(image: np.ndarray, runtime: RadiographRuntime, ai: list[ImplantFinding],
                      review: ImplantReview, parts: list[ImplantPart] | None = None) -> list[ImplantFinding]:
    """The implants of ``review`` in its order: AI findings kept (with the dentist's system
    if named) and boxes drawn (``parts``: stage 1's, if already detected)."""
    out = []
    for edit in review.implants:
        if edit.finding is not None:
            finding = ai[edit.finding - 1]
        else:
            assert edit.box is not None
            finding = drawn_finding(image, runtime, edit.box, parts)
        if edit.system is not None:
            finding = replace(finding, system_top=((edit.system, 1.0),), system_by_person=True)
        out.append(finding)
    return out


def correct_implants(source: Dataset, runtime: RadiographRuntime, reported: list[ImplantFinding],
                     review: ImplantReview, *, uid_seed: str, progress: ProgressLog = no_log
                     ) -> ImplantCorrectionResult:
    """Write the objects of a dentist's review of the AI's implant findings on ``source``
    (module docstring).

    Parameters
    ----------
    source : Dataset
        The radiograph the processing job read.
    runtime : RadiographRuntime
        The node's radiograph runtime (the one that processed it).
    reported : list of ImplantFinding
        The AI's findings as the processing job reported them (:func:`reported_findings`).
    review : ImplantReview
    uid_seed : str
        Seed of the new objects' UIDs (with :meth:`ImplantReview.key`).

    Raises
    ------
    InputError
        The review does not apply (:meth:`ImplantReview.check`).
    """
    rows, columns = int(source.Rows), int(source.Columns)
    review.check(len(reported), rows, columns)
    sop = str(source.SOPInstanceUID)
    image = load_radiograph(source)
    stage1 = getattr(runtime, "detect_parts", None)  # the learned runtime: stage 1 once for both uses
    parts = stage1(image) if stage1 is not None and review.implants else None
    ai = ai_findings(image, runtime, reported, parts) if any(e.finding is not None for e in review.implants) \
        else reported
    findings = reviewed_findings(image, runtime, ai, review, parts)
    progress(f"{sop}: {len(findings)} implant(s) after the review ({review.describe(len(reported))})")
    result = RadiographResult(findings=findings, image_shape=(rows, columns), algorithm=runtime.info)
    seed = f"{uid_seed}/{sop}/review/{review.key()}"
    objects: list[ResultObject] = []
    seg = None
    if findings:
        seg = write_implant_segmentation(source, result, uid_seed=f"{seed}/seg", series_number=CORRECTED_SEG_SERIES,
                                         corrected=True)
        objects.append(ResultObject("seg", seg))
    objects.append(ResultObject("sr", write_implant_report(  # kept findings keep the AI report's tracking UIDs
        source, result, segmentation=seg, uid_seed=f"{seed}/sr", series_number=CORRECTED_REPORT_SERIES,
        reviewer=review.operator or "", ai_findings=[e.finding for e in review.implants],
        ai_uid_seed=f"{uid_seed}/{sop}/sr")))
    objects.append(ResultObject("pr", write_implant_presentation_state(
        source, result, uid_seed=f"{seed}/pr", series_number=CORRECTED_PR_SERIES, corrected=True)))
    objects.append(ResultObject("sc", write_secondary_capture(
        source, render_findings(image, findings), description="AI implant findings, corrected (burned in)",
        series_number=CORRECTED_BURNED_IN_SERIES, uid_seed=f"{seed}/sc", burned_in_annotation=True,
        algorithm=runtime.info, derivation_description="implant boxes as the dentist reviewed them, burned in")))
    summary = {"sop_instance_uid": sop, "operator": review.operator, "description": review.describe(len(reported)),
               "implants": [finding_json(f) for f in findings]}
    return ImplantCorrectionResult(objects=objects, findings=findings, summary=summary)


def finding_json(finding: ImplantFinding) -> dict:
    """A reviewed finding as the API reports it: :func:`finding_summary` with its origin,
    no score for a drawn box and no probability for a system the dentist named."""
    out = {**finding_summary(finding), "origin": finding.origin, "system_by_person": finding.system_by_person}
    if finding.origin == "person":
        out["score"] = None
    if finding.system_by_person:
        out["system_top"] = [[name, None] for name, _ in finding.system_top]
    return out
