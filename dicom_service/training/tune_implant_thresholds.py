"""Choose the learned implant runtime's operating point on a validation split.

The thresholds of :class:`~dicom_service.vision.implant_runtime.OperatingPoint` belong
to the weights they were chosen for, so ``train implants`` picks them after training and
stores them in the bundle's ``config.json`` (``"thresholds"``), where the runtime reads
them. The search runs stage 1 once per image (parts down to the lowest score of the
grid), then for every grid point only stage 2's grouping:

1. ``part_threshold`` × ``part_nms_iou`` × ``group_nms_iou``: the triple with the best
   implant AP50 + AP (AP over IoU 0.50:0.95; ties: the better AP50, then the higher
   thresholds). AP50 alone, on a validation split of about a hundred implants, lets one
   implant more found at IoU 0.5 outweigh much looser boxes everywhere else;
2. ``finding_threshold``: with that triple, the floor on implant scores with the best F1
   of reported implants (greedy IoU ≥ 0.5 matching), ties to the higher floor.

It never looks at the test split's labels unless told to: :func:`tune_operating_point`
refuses ``split="test"``, so the figures ``eval implants`` reports stay held out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from dicom_service.domain import ImplantPart
from dicom_service.training.coco import CocoDataset
from dicom_service.training.detection_metrics import ImageDetections, coco_ap
from dicom_service.training.evaluate_implants import image_truth, operating_counts, precision_recall
from dicom_service.vision.implant_runtime import LearnedImplantRuntime

PART_GRID: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PART_NMS_GRID: tuple[float, ...] = (0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 1.0)
NMS_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6)
FINDING_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 19))


def _grouped(runtime: LearnedImplantRuntime, cached: Sequence[tuple[list[ImplantPart], tuple[int, int]]]
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Implant boxes ``(N, 4)`` and scores ``(N,)`` per image at the runtime's operating point."""
    out = []
    for parts, shape in cached:
        groups = runtime.group(parts, shape)
        out.append((np.array([g.box for g in groups], dtype=float).reshape(-1, 4),
                    np.array([g.score for g in groups], dtype=float)))
    return out


def tune_operating_point(runtime: LearnedImplantRuntime, coco: CocoDataset, *, split: str = "val",
                         limit: int | None = None, part_grid: Sequence[float] = PART_GRID,
                         part_nms_grid: Sequence[float] = PART_NMS_GRID, nms_grid: Sequence[float] = NMS_GRID,
                         finding_grid: Sequence[float] = FINDING_GRID) -> dict:
    """Grid-search the runtime's thresholds on ``split`` and set the best on ``runtime``.

    Parameters
    ----------
    runtime : LearnedImplantRuntime
        Its :attr:`~LearnedImplantRuntime.operating_point` is replaced by the choice.
    coco : CocoDataset
        Images with implant boxes; ``split`` must not be ``"test"``.
    limit : int, optional
        First N images of the split (smoke runs).

    Returns
    -------
    dict
        ``{"part_threshold", "finding_threshold", "group_nms_iou", "part_nms_iou", "chosen_on",
        "images", "implants", "ap50", "ap", "precision", "recall", "f1"}`` (the last six
        on ``split`` at the chosen point): what a bundle stores as ``"thresholds"``.

    Raises
    ------
    ValueError
        ``split`` is ``"test"``, or it has no image with an implant.
    """
    from dicom_service.training.implant_data import read_radiograph

    if split == "test":
        raise ValueError("thresholds must not be chosen on the test split that eval implants reports")
    images = sorted(coco.split(split), key=lambda im: im.id)[:limit]
    truth = [image_truth(coco, info.id, ("implant",)) for info in images]
    if not any(len(t.boxes) for t in truth):
        raise ValueError(f"split {split!r} has no implant to choose thresholds on")
    cached = []
    for info in images:
        image = read_radiograph(info)
        cached.append((runtime.detect_parts(image, threshold=min(part_grid)), image.shape[:2]))
    start = runtime.operating_point
    best_key: tuple[float, ...] | None = None
    for part, part_nms, nms in itertools.product(part_grid, part_nms_grid, nms_grid):
        runtime.operating_point = replace(start, part_threshold=part, part_nms_iou=part_nms, group_nms_iou=nms)
        found = _grouped(runtime, cached)
        ap = coco_ap([ImageDetections(b, s, np.zeros(len(b), dtype=int)) for b, s in found], truth, ["implant"])
        key = (round(ap.ap50 + ap.ap, 6), round(ap.ap50, 6), part, part_nms, nms)
        if best_key is None or key > best_key:
            best_key, best, best_ap = key, runtime.operating_point, ap
    runtime.operating_point = best
    found = _grouped(runtime, cached)
    scores: list[tuple[float, float, float, float]] = []
    for floor in finding_grid:
        totals = {"true_positives": 0, "false_positives": 0, "false_negatives": 0}
        for (boxes, group_scores), t in zip(found, truth, strict=True):
            counts = operating_counts(t.boxes, list(boxes[group_scores >= floor]))
            totals = {k: v + counts[k] for k, v in totals.items()}
        precision, recall = precision_recall(totals)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append((f1, floor, precision, recall))
    f1, floor, precision, recall = max(scores)
    runtime.operating_point = replace(best, finding_threshold=floor)
    return {**asdict(runtime.operating_point), "chosen_on": split, "images": len(images),
            "implants": int(sum(len(t.boxes) for t in truth)), "ap50": round(best_ap.ap50, 6),
            "ap": round(best_ap.ap, 6), "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4)}
