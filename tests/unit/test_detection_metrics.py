"""COCO-style AP, top-k accuracy, confusion matrix and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_service.training.detection_metrics import (
    ImageDetections,
    ImageTruth,
    coco_ap,
    coco_ap_if_defined,
    confusion_matrix,
    iou_matrix,
    reliability,
    topk_accuracy,
)


def _d(boxes, scores, labels) -> ImageDetections:
    return ImageDetections(np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(labels))


def _t(boxes, labels) -> ImageTruth:
    return ImageTruth(np.array(boxes, float).reshape(-1, 4), np.array(labels))


def test_iou() -> None:
    m = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert m[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_perfect_detections_give_ap_one() -> None:
    truth = [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    dets = [_d([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [0, 1])]
    r = coco_ap(dets, truth, ["implant", "part"])
    assert (r.ap, r.ap50, r.ap75) == (1.0, 1.0, 1.0)
    assert set(r.per_class) == {"implant", "part"}


def test_loose_box_counts_at_50_not_at_75() -> None:
    truth = [_t([[0, 0, 10, 10]], [0])]
    dets = [_d([[0, 0, 10, 16]], [0.9], [0])]  # IoU 0.625
    r = coco_ap(dets, truth, ["implant"])
    assert r.ap50 == 1.0 and r.ap75 == 0.0 and 0 < r.ap < 1


def test_missed_object_halves_recall() -> None:
    truth = [_t([[0, 0, 10, 10]], [0]), _t([[0, 0, 10, 10]], [0])]
    dets = [_d([[0, 0, 10, 10]], [0.9], [0]), _d(np.zeros((0, 4)), [], [])]
    assert coco_ap(dets, truth, ["implant"]).ap50 == pytest.approx(51 / 101)


def test_high_scoring_false_positive_lowers_ap() -> None:
    truth = [_t([[0, 0, 10, 10]], [0])]
    dets = [_d([[50, 50, 60, 60], [0, 0, 10, 10]], [0.95, 0.9], [0, 0])]
    assert coco_ap(dets, truth, ["implant"]).ap50 == pytest.approx(0.5)


def test_duplicates_are_false_positives_and_classes_without_truth_are_skipped() -> None:
    truth = [_t([[0, 0, 10, 10]], [0])]
    dets = [_d([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    r = coco_ap(dets, truth, ["implant", "never-seen"])
    assert r.ap50 == 1.0 and "never-seen" not in r.per_class
    with pytest.raises(ValueError):
        coco_ap(dets, truth + truth, ["implant"])


def test_ap_is_undefined_without_any_ground_truth() -> None:
    negatives = [_t(np.zeros((0, 4)), []), _t(np.zeros((0, 4)), [])]
    dets = [_d([[0, 0, 10, 10]], [0.9], [0]), _d(np.zeros((0, 4)), [], [])]
    with pytest.raises(ValueError, match="no ground truth"):
        coco_ap(dets, negatives, ["implant"])
    assert coco_ap_if_defined(dets, negatives, ["implant"]) is None
    truth = [_t([[0, 0, 10, 10]], [0]), _t(np.zeros((0, 4)), [])]
    assert coco_ap_if_defined(dets, truth, ["implant"]).ap50 == 1.0
    with pytest.raises(ValueError):
        coco_ap_if_defined(dets, negatives[:1], ["implant"])


def test_topk_confusion_and_reliability() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    y = np.array([0, 1, 1])
    assert topk_accuracy(p, y, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(p, y, 2) == pytest.approx(1.0)
    assert confusion_matrix(p.argmax(1), y, 3).tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 0]]
    calibrated = reliability(np.array([[0.9, 0.1]] * 10), np.array([0] * 9 + [1]))
    assert calibrated.ece == pytest.approx(0.0, abs=1e-9)
    overconfident = reliability(np.array([[0.99, 0.01]] * 10), np.array([0] * 5 + [1] * 5))
    assert overconfident.ece == pytest.approx(0.49)
    assert int(overconfident.count.sum()) == 10
