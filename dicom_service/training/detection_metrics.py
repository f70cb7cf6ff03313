"""Detection and identification metrics: COCO-style AP, top-k accuracy, calibration.

Implemented with NumPy (no pycocotools) and following the COCO evaluation protocol:
per class and IoU threshold, detections of all images are sorted by score and greedily
matched to the unmatched ground truth of highest IoU in their image; precision is made
monotone and sampled at 101 recall points; AP is the mean over IoU thresholds
0.50:0.05:0.95, AP50 and AP75 the values at 0.50 and 0.75. ``iscrowd`` regions and
area ranges are not used (our annotations have none).

Boxes are ``(x0, y0, x1, y1)`` in pixels (x = column, y = row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageDetections:
    """Detections of one image: ``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)``."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ImageTruth:
    """Ground truth of one image: ``boxes (M, 4)`` and ``labels (M,)``."""

    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class APResult:
    """COCO-style summary: AP (0.50:0.95), AP50, AP75, overall and per class."""

    ap: float
    ap50: float
    ap75: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a (N, 4)`` with every box in ``b (M, 4)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _class_ap(dets: Sequence[ImageDetections], truth: Sequence[ImageTruth], label: int,
              threshold: float) -> float | None:
    """AP of one class at one IoU threshold; None when the class has no ground truth."""
    n_truth = sum(int((t.labels == label).sum()) for t in truth)
    if n_truth == 0:
        return None
    records: list[tuple[float, int, int]] = []  # (score, image, detection index)
    for i, d in enumerate(dets):
        for j in np.flatnonzero(d.labels == label):
            records.append((float(d.scores[j]), i, int(j)))
    if not records:
        return 0.0
    records.sort(key=lambda r: -r[0])
    matched = [np.zeros(int((t.labels == label).sum()), dtype=bool) for t in truth]
    truth_boxes = [t.boxes[t.labels == label] for t in truth]
    tp = np.zeros(len(records))
    for k, (_, i, j) in enumerate(records):
        if truth_boxes[i].size == 0:
            continue
        ious = iou_matrix(dets[i].boxes[j:j + 1], truth_boxes[i])[0]
        ious[matched[i]] = -1.0
        best = int(ious.argmax())
        if ious[best] >= threshold:
            matched[i][best] = True
            tp[k] = 1.0
    cum_tp = np.cumsum(tp)
    recall = cum_tp / n_truth
    precision = cum_tp / np.arange(1, len(records) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    sampled = np.zeros_like(_RECALL_POINTS)
    positions = np.searchsorted(recall, _RECALL_POINTS, side="left")
    valid = positions < len(precision)
    sampled[valid] = precision[positions[valid]]
    return float(sampled.mean())


def coco_ap(dets: Sequence[ImageDetections], truth: Sequence[ImageTruth],
            class_names: Sequence[str]) -> APResult:
    """COCO-style AP over images; ``class_names[i]`` names label ``i``.

    Classes without ground truth are left out of the means (as COCO does).
    """
    if len(dets) != len(truth):
        raise ValueError(f"{len(dets)} detection lists for {len(truth)} images")
    table = np.full((len(class_names), len(IOU_THRESHOLDS)), np.nan)
    for c in range(len(class_names)):
        for t, threshold in enumerate(IOU_THRESHOLDS):
            value = _class_ap(dets, truth, c, threshold)
            if value is not None:
                table[c, t] = value
    present = ~np.isnan(table[:, 0])
    if not present.any():
        raise ValueError("no ground truth in any class")
    per_class = {
        class_names[c]: {"ap": float(table[c].mean()), "ap50": float(table[c, 0]),
                         "ap75": float(table[c, IOU_THRESHOLDS.index(0.75)])}
        for c in range(len(class_names)) if present[c]
    }
    rows = table[present]
    return APResult(ap=float(rows.mean()), ap50=float(rows[:, 0].mean()),
                    ap75=float(rows[:, IOU_THRESHOLDS.index(0.75)].mean()), per_class=per_class)


def coco_ap_if_defined(dets: Sequence[ImageDetections], truth: Sequence[ImageTruth],
                       class_names: Sequence[str]) -> APResult | None:
    """:func:`coco_ap`, or None where it is undefined: no image has ground truth of any class.

    An all-negative split (e.g. implant-free radiographs kept to count false positives)
    has no recall axis, so AP is neither 0 nor 1; callers report it as undefined.

    Raises
    ------
    ValueError
        ``dets`` and ``truth`` differ in length.
    """
    if len(dets) != len(truth):
        raise ValueError(f"{len(dets)} detection lists for {len(truth)} images")
    known = np.arange(len(class_names))
    if not any(np.isin(t.labels, known).any() for t in truth):
        return None
    return coco_ap(dets, truth, class_names)


def topk_accuracy(probabilities: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target is among the ``k`` most probable classes.

    Parameters
    ----------
    probabilities : np.ndarray
        ``(N, C)`` class probabilities (or scores).
    targets : np.ndarray
        ``(N,)`` int true class indices.
    """
    probabilities = np.asarray(probabilities)
    targets = np.asarray(targets)
    if probabilities.ndim != 2 or len(probabilities) != len(targets) or len(targets) == 0:
        raise ValueError("need (N, C) probabilities and N > 0 targets")
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def confusion_matrix(predicted: np.ndarray, targets: np.ndarray, classes: int) -> np.ndarray:
    """``(classes, classes)`` int counts; row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


@dataclass
class Reliability:
    """Calibration of top-1 predictions in equal-width confidence bins.

    ``confidence``, ``accuracy`` and ``count`` are ``(bins,)`` arrays (NaN where a bin is
    empty); ``ece`` is the expected calibration error (count-weighted |acc - conf|).
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = 10) -> Reliability:
    """Reliability diagram data and ECE of ``(N, C)`` probabilities against ``(N,)`` targets."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    conf = np.full(bins, np.nan)
    acc = np.full(bins, np.nan)
    count = np.bincount(index, minlength=bins)
    for b in range(bins):
        members = index == b
        if members.any():
            conf[b] = confidence[members].mean()
            acc[b] = correct[members].mean()
    filled = count > 0
    ece = float((count[filled] * np.abs(acc[filled] - conf[filled])).sum() / max(1, len(targets)))
    return Reliability(conf, acc, count, ece)
