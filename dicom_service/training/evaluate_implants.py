"""``dicom-service eval implants``: measure a trained bundle on a held-out COCO split.

Reports (JSON, plus PNG figures):

* implant detection: COCO-style AP, AP50, AP75 of the stage-2 implant boxes;
* part detection: AP, AP50, AP75 and per-class AP of the stage-1 parts;
* identification: system top-1 and top-3 accuracy over ground-truth implants matched by
  a predicted implant (IoU ≥ 0.5; unmatched implants count as wrong), the confusion
  matrix and the reliability diagram (ECE) of the calibrated system probabilities;
* the operating point (the node's default thresholds): precision, recall, false
  positives per image, how many images got a finding and how many implant-free images
  did;
* identification alone: system top-1 / top-3 of the identifier on the true implant
  boxes (as if detection were perfect);
* speed: mean milliseconds per image on the device used.

A split without any annotated implant (implant-free radiographs, kept to count false
positives) is measured too: AP, recall and the system metrics are undefined there and
reported as ``None`` (JSON null), never as a made-up 0 or 1; precision is 0 when
something was reported (every finding is false) and ``None`` when nothing was.

:func:`evaluate_one_stage` measures the one-stage ablation detector (implant AP only).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicom_service.training.coco import CocoDataset, load_coco
from dicom_service.training.detection_metrics import (
    APResult,
    ImageDetections,
    ImageTruth,
    coco_ap_if_defined,
    confusion_matrix,
    iou_matrix,
    reliability,
    topk_accuracy,
)
from dicom_service.training.plots import render_confusion_matrix, render_reliability, save_png
from dicom_service.vision.part_detector import PART_CLASSES

if TYPE_CHECKING:
    import torch

    from dicom_service.vision.implant_runtime import LearnedImplantRuntime

PART_NAMES: tuple[str, ...] = PART_CLASSES[1:]


def operating_counts(truth: np.ndarray, found: list) -> dict[str, int]:
    """Greedy IoU ≥ 0.5 matching of reported implants to the truth of one image."""
    ious = iou_matrix(truth, np.array(found, dtype=float).reshape(-1, 4))
    matched_truth: set[int] = set()
    tp = 0
    for j in range(ious.shape[1]):
        candidates = [(ious[t, j], t) for t in range(ious.shape[0]) if t not in matched_truth and ious[t, j] >= 0.5]
        if candidates:
            matched_truth.add(max(candidates)[1])
            tp += 1
    return {"true_positives": tp, "false_positives": len(found) - tp, "false_negatives": len(truth) - tp,
            "images_with_findings": int(len(found) > 0), "images_without_implants": int(len(truth) == 0),
            "of_which_with_findings": int(len(truth) == 0 and len(found) > 0)}


def covering_findings(truth: np.ndarray, found: list) -> list[int | None]:
    """Per true box ``(T, 4)``, the index of the found box of highest IoU with it, or None
    below IoU 0.5 (one found box may cover several true ones)."""
    ious = iou_matrix(truth, np.array(found, dtype=float).reshape(-1, 4))
    if not ious.shape[1]:
        return [None] * ious.shape[0]
    best = ious.argmax(axis=1)
    return [int(j) if ious[t, j] >= 0.5 else None for t, j in enumerate(best)]


def precision_recall(totals: dict[str, int]) -> tuple[float, float]:
    """Precision and recall of summed :func:`operating_counts` (1.0 when undefined)."""
    tp, fp, fn = totals["true_positives"], totals["false_positives"], totals["false_negatives"]
    return tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0


def operating_summary(totals: dict[str, int], images: int) -> dict[str, float | int | None]:
    """Rates of summed :func:`operating_counts` over ``images`` images, None where undefined.

    Precision is None when nothing was reported, recall None when the images hold no
    implant (unlike :func:`precision_recall`, whose 1.0 suits a threshold search, not a
    report). ``false_positives_per_image`` is always defined (``images`` > 0).
    """
    if images < 1:
        raise ValueError("an operating point needs at least one image")
    tp, fp, fn = totals["true_positives"], totals["false_positives"], totals["false_negatives"]
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "false_positives_per_image": fp / images, **totals}


def ap_summary(result: APResult | None) -> dict[str, float | None]:
    """``{"ap", "ap50", "ap75"}`` of a :func:`coco_ap_if_defined` result; None values when undefined."""
    if result is None:
        return {"ap": None, "ap50": None, "ap75": None}
    return {"ap": result.ap, "ap50": result.ap50, "ap75": result.ap75}


def image_truth(coco: CocoDataset, image_id: int, names: tuple[str, ...]) -> ImageTruth:
    """Boxes and label indices (into ``names``) of one image's annotations of those categories."""
    anns = [a for a in coco.for_image(image_id) if a.category in names]
    boxes = np.array([a.box for a in anns], dtype=float).reshape(-1, 4)
    return ImageTruth(boxes, np.array([names.index(a.category) for a in anns], dtype=int))


def evaluate_bundle(model_dir: Path, coco_path: Path, *, split: str = "test", device: str = "cpu",
                    out_dir: Path | None = None, limit: int | None = None) -> dict:
    """Load a bundle, run :func:`evaluate_runtime` on ``split`` of a COCO data set.

    The report (with ``model`` and ``data``) is also written to
    ``out_dir/eval_implants.json`` when ``out_dir`` is given.

    Raises
    ------
    ValueError
        No bundle in ``model_dir``, or a bad data set or split.
    """
    from dicom_service.vision.implant_runtime import LearnedImplantRuntime

    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"no trained bundle in {model_dir}")
    coco = load_coco(coco_path)  # before the models: a bad data set fails fast
    runtime = LearnedImplantRuntime(model_dir, device)
    report = evaluate_runtime(runtime, coco, split=split, out_dir=out_dir, limit=limit)
    report.update(model=str(model_dir), data=str(coco_path))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval_implants.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def evaluate_runtime(runtime: LearnedImplantRuntime, coco: CocoDataset, *, split: str = "test",
                     out_dir: Path | None = None, limit: int | None = None) -> dict:
    """Run the learned runtime on ``split`` images and compute every metric.

    Returns
    -------
    dict
        JSON-serialisable report; the confusion matrix and reliability diagram are
        written to ``out_dir`` when given.
    """
    from dicom_service.training.implant_data import read_radiograph

    device = str(runtime.device)
    images = sorted(coco.split(split), key=lambda im: im.id)[:limit]
    if not images:
        raise ValueError(f"no images in split {split!r}")
    systems = list(runtime.identifier.systems)
    implant_dets, implant_truth, part_dets, part_truth = [], [], [], []
    probabilities, targets, truth_box_probabilities = [], [], []
    operating_totals = {"true_positives": 0, "false_positives": 0, "false_negatives": 0, "images_with_findings": 0,
                        "images_without_implants": 0, "of_which_with_findings": 0}
    seconds = 0.0
    for image_info in images:
        image = read_radiograph(image_info)
        truth_box_probabilities += _identify_truth_boxes(runtime, coco, image_info.id, image)
        start = time.perf_counter()
        parts = runtime.detect_parts(image)
        result = runtime.detect(image, parts=parts, finding_threshold=0.0)  # every implant score, for AP
        seconds += time.perf_counter() - start
        found = result.findings
        truth_anns = [a for a in coco.for_image(image_info.id) if a.category == "implant"]
        truth_boxes = np.array([a.box for a in truth_anns], dtype=float).reshape(-1, 4)
        reported = [f.box for f in found if f.score >= runtime.finding_threshold]  # what the node reports
        for key, value in operating_counts(truth_boxes, reported).items():
            operating_totals[key] += value
        part_dets.append(ImageDetections(
            np.array([p.box for p in parts], dtype=float).reshape(-1, 4),
            np.array([p.score for p in parts], dtype=float),
            np.array([PART_NAMES.index(p.label) for p in parts], dtype=int)))
        part_truth.append(image_truth(coco, image_info.id, PART_NAMES))
        implant_dets.append(ImageDetections(
            np.array([f.box for f in found], dtype=float).reshape(-1, 4),
            np.array([f.score for f in found], dtype=float), np.zeros(len(found), dtype=int)))
        implant_truth.append(ImageTruth(truth_boxes, np.zeros(len(truth_anns), dtype=int)))
        covers = covering_findings(truth_boxes, [f.box for f in found])
        for t, ann in enumerate(truth_anns):
            if ann.system is None or ann.system not in systems:
                continue
            row = np.zeros(len(systems))
            if covers[t] is not None:
                for name, p in found[covers[t]].system_top:
                    row[systems.index(name)] = p
            probabilities.append(row)
            targets.append(systems.index(ann.system))
    part_ap = coco_ap_if_defined(part_dets, part_truth, list(PART_NAMES))
    report: dict = {
        "split": split, "images": len(images),
        "device": device, "ms_per_image": round(1000 * seconds / len(images), 1),
        "implants": ap_summary(coco_ap_if_defined(implant_dets, implant_truth, ["implant"])),
        "parts": {**ap_summary(part_ap), "per_class": part_ap.per_class if part_ap is not None else {}},
        "operating_point": {**asdict(runtime.operating_point), **operating_summary(operating_totals, len(images))},
    }
    if targets:
        probs, y = np.array(probabilities), np.array(targets)
        matched = probs.sum(axis=1) > 0  # implants no prediction matched count as wrong
        top = np.argsort(-probs, axis=1)
        report["systems"] = {
            "implants": int(len(y)), "matched": int(matched.sum()),
            "top1": float((matched & (top[:, 0] == y)).mean()),
            "top3": float((matched & (top[:, :3] == y[:, None]).any(axis=1)).mean()),
            "top1_of_matched": float((top[matched, 0] == y[matched]).mean()) if matched.any() else 0.0,
            "names": systems,
        }
        truth_probs = np.array(truth_box_probabilities)
        report["systems"]["on_true_boxes"] = {
            "top1": topk_accuracy(truth_probs, y, 1), "top3": topk_accuracy(truth_probs, y, 3)}
        if matched.any():
            matrix = confusion_matrix(top[matched, 0], y[matched], len(systems))
            rel = reliability(probs[matched], y[matched])
            report["systems"].update(ece=rel.ece, confusion=matrix.tolist())
            if out_dir is not None:
                save_png(render_confusion_matrix(matrix, systems), out_dir / "system_confusion.png")
                save_png(render_reliability(rel, title="system probabilities"), out_dir / "reliability.png")
    return report


def _identify_truth_boxes(runtime: LearnedImplantRuntime, coco: CocoDataset, image_id: int, image: np.ndarray
                          ) -> list[np.ndarray]:
    """Calibrated system probabilities ``(S,)`` of each annotated implant, cut at its true box.

    Measures stage-2 identification alone (as if detection were perfect); implants
    whose system is not one of the identifier's are skipped, as in the main loop.
    """
    import torch

    from dicom_service.training.implant_data import coronal_on_top
    from dicom_service.vision.implant_identifier import crop_implant

    systems = list(runtime.identifier.systems)
    anns = coco.for_image(image_id)
    implants = [a for a in anns if a.category == "implant" and a.system in systems]
    if not implants:
        return []
    crops = np.stack([crop_implant(image, a.box, coronal_on_top=coronal_on_top(a, anns)) for a in implants])
    rows = []
    for identity in runtime.identifier.identify(torch.from_numpy(crops)[:, None].to(runtime.device),
                                                top=len(systems)):
        row = np.zeros(len(systems))
        for name, p in identity["systems"]:
            row[systems.index(name)] = p
        rows.append(row)
    return rows


def evaluate_one_stage(detector: torch.nn.Module, img_size: int, coco: CocoDataset, *, split: str = "test",
                       device: str = "cpu", limit: int | None = None, threshold: float = 0.05) -> dict:
    """Implant AP of a one-stage detector (whole-implant boxes, no design parts).

    The detector runs over the same windows as the two-stage runtime
    (:func:`~dicom_service.vision.implant_runtime.detect_in_windows`).
    """
    import torch

    from dicom_service.training.implant_data import read_radiograph
    from dicom_service.vision.implant_runtime import detect_in_windows

    images = sorted(coco.split(split), key=lambda im: im.id)[:limit]
    detector.eval()
    dets, truth, seconds = [], [], 0.0
    for info in images:
        image = read_radiograph(info)
        start = time.perf_counter()
        boxes, scores, _ = detect_in_windows(detector, image, img_size, threshold=threshold,
                                             device=torch.device(device))
        seconds += time.perf_counter() - start
        dets.append(ImageDetections(boxes, scores, np.zeros(len(boxes), dtype=int)))
        truth.append(image_truth(coco, info.id, ("implant",)))
    return {"split": split, "images": len(images), "ms_per_image": round(1000 * seconds / max(1, len(images)), 1),
            "implants": ap_summary(coco_ap_if_defined(dets, truth, ["implant"]))}
