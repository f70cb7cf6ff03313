"""The learned radiograph runtime of seed 002: parts → implants → system.

``detect(image)`` fits the radiograph to the detector's input (letterbox, or tiles for
panoramic images), detects design parts (stage 1), merges them across tiles with
per-class NMS, groups them into implants (stage 2: k-means++ and geometry), and
identifies each implant's design attributes and system (calibrated top 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from dicom_service.domain import AlgorithmInfo, ImplantFinding, ImplantPart, RadiographResult
from dicom_service.vision.implant_bundle import load_bundle
from dicom_service.vision.implant_grouping import (
    ImplantGroup,
    group_parts,
    suppress_overlaps,
    suppress_part_overlaps,
)
from dicom_service.vision.implant_identifier import ImplantIdentifier, crop_implant
from dicom_service.vision.part_detector import PART_CLASSES
from dicom_service.vision.tiling import plan_windows

log = logging.getLogger(__name__)

#: Fallback score thresholds of stage 1 (parts) and of reported implants, and the IoU
#: above which two implant groups are one implant, for bundles whose ``config.json`` has
#: no ``thresholds`` (``train implants`` chooses them on the validation split and
#: stores them there: :mod:`dicom_service.training.tune_implant_thresholds`).
PART_THRESHOLD = 0.3
FINDING_THRESHOLD = 0.4
GROUP_NMS_IOU = 0.5
PART_NMS_IOU = 0.3


@dataclass(frozen=True)
class OperatingPoint:
    """The thresholds of the learned runtime.

    Attributes
    ----------
    part_threshold : float
        Stage-1 detections below this score are ignored.
    finding_threshold : float
        Implants (grouped parts) scoring below this are not reported; the score is the
        mean part score times the fraction of the three parts detected. 0 reports every
        group (what ``eval implants`` does to compute AP over all operating points).
    group_nms_iou : float
        Two implant groups whose boxes overlap by this IoU or more are one implant.
    part_nms_iou : float
        Before grouping, a part overlapping a higher-scoring part of any label by this
        IoU or more is dropped (:func:`~dicom_service.vision.implant_grouping.suppress_part_overlaps`;
        1 keeps every part).
    """

    part_threshold: float = PART_THRESHOLD
    finding_threshold: float = FINDING_THRESHOLD
    group_nms_iou: float = GROUP_NMS_IOU
    part_nms_iou: float = PART_NMS_IOU

    @classmethod
    def from_config(cls, config: dict) -> OperatingPoint:
        """The bundle's ``thresholds`` (chosen on validation), else the module defaults."""
        stored = config.get("thresholds") or {}
        return cls(**{f.name: float(stored[f.name]) for f in fields(cls) if f.name in stored})


def _axis(group: ImplantGroup) -> tuple[float, float, float, float] | None:
    """Coronal-end to apex line from the outermost detected parts, if two or more."""
    if len(group.parts) < 2:
        return None
    first, last = group.parts[0].box, group.parts[-1].box
    return ((first[0] + first[2]) / 2, (first[1] + first[3]) / 2,
            (last[0] + last[2]) / 2, (last[1] + last[3]) / 2)


def finding_crop(image: np.ndarray, box: tuple[float, float, float, float],
                 axis: tuple[float, float, float, float] | None) -> np.ndarray:
    """The identifier's ``(192, 64)`` input for an implant box of a ``(rows, cols)`` image:
    coronal end on top when the axis (coronal end → apex, ``(x0, y0, x1, y1)``) says so."""
    return crop_implant(image, box, coronal_on_top=axis is None or axis[3] >= axis[1])


#: A radiograph at least this many times as wide as high is taken as a panoramic (both jaws).
PANORAMIC_ASPECT = 1.5


def parts_in_box(parts: list[ImplantPart], box: tuple[float, float, float, float]) -> tuple[ImplantPart, ...]:
    """The parts whose centre lies in ``box`` (``(x0, y0, x1, y1)`` pixels), the best of
    each label, in the order coronal, middle, apical."""
    x0, y0, x1, y1 = box
    best: dict[str, ImplantPart] = {}
    for part in sorted(parts, key=lambda p: -p.score):
        cx, cy = (part.box[0] + part.box[2]) / 2, (part.box[1] + part.box[3]) / 2
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            best.setdefault(part.label, part)
    return tuple(best[label] for label in PART_CLASSES if label in best)


@torch.no_grad()
def detect_in_windows(detector: torch.nn.Module, image: np.ndarray, size: int, *, threshold: float,
                      device: torch.device, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a torchvision detector over the model windows of an image and merge them.

    Parameters
    ----------
    detector : torch.nn.Module
        A detector in eval mode taking ``(1, size, size)`` images.
    image : np.ndarray
        ``(rows, cols)`` float in [0, 1].
    size : int
        The detector's square input side.
    threshold : float
        Detections scoring below it are dropped before the merge.
    iou : float
        Per-class NMS threshold across overlapping tiles.

    Returns
    -------
    boxes : np.ndarray
        ``(N, 4)`` float64 ``(x0, y0, x1, y1)`` in source pixels (x = column).
    scores : np.ndarray
        ``(N,)`` float64, descending.
    labels : np.ndarray
        ``(N,)`` int64 class indices of the detector.
    """
    windows = plan_windows(image.shape, size)
    batch = [torch.from_numpy(w.crop(image.astype(np.float32, copy=False)))[None].to(device) for w in windows]
    outputs = detector(batch)
    boxes, scores, labels = [], [], []
    for window, out in zip(windows, outputs, strict=True):
        keep = out["scores"] >= threshold
        if not keep.any():
            continue
        boxes.append(torch.from_numpy(window.to_source(out["boxes"][keep].float().cpu().numpy())))
        scores.append(out["scores"][keep].cpu().double())
        labels.append(out["labels"][keep].cpu())
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    kept = batched_nms(all_boxes, all_scores, all_labels, iou)
    return all_boxes[kept].numpy(), all_scores[kept].numpy(), all_labels[kept].numpy()


def _weights_version(config: dict) -> str:
    """Algorithm version: the first 12 hex digits of the detector and identifier sha256 (or "untracked")."""
    weights = config.get("weights", {})
    try:
        return f"{weights['detector']['sha256'][:12]}.{weights['identifier']['sha256'][:12]}"
    except (KeyError, TypeError):
        return "untracked"


class LearnedImplantRuntime:
    """:class:`~dicom_service.vision.runtime.RadiographRuntime` with trained models.

    Parameters
    ----------
    model_dir : Path
        A bundle written by ``dicom-service train implants`` (``config.json`` and
        safetensors weights).
    device : str
        ``"cpu"`` or ``"cuda[:N]"``.
    **overrides : float
        Fields of :class:`OperatingPoint` (``part_threshold``, ``finding_threshold``,
        ``group_nms_iou``, ``part_nms_iou``) that replace the bundle's.
    """

    def __init__(self, model_dir: Path, device: str = "cpu", **overrides: float) -> None:
        detector, identifier, config = load_bundle(model_dir, torch.device(device))
        self._setup(detector, identifier, config, device, overrides)

    @classmethod
    def from_models(cls, detector: torch.nn.Module, identifier: ImplantIdentifier, config: dict, device: str = "cpu",
                    **overrides: float) -> LearnedImplantRuntime:
        """A runtime over models already in memory (evaluation of a run before it is bundled)."""
        runtime = cls.__new__(cls)
        runtime._setup(detector, identifier, config, device, overrides)
        return runtime

    def _setup(self, detector: torch.nn.Module, identifier: ImplantIdentifier, config: dict, device: str,
               overrides: dict[str, float]) -> None:
        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        self.identifier = identifier.to(self.device).eval()
        self.config = config
        self.size = int(self.config["vit"]["img_size"])
        self.operating_point = replace(OperatingPoint.from_config(config), **overrides)
        self.info = AlgorithmInfo(
            name="implant-two-stage-vit",
            version=_weights_version(config),
            family="ai",
            parameters=f"init={self.config.get('init')}; vit={self.config['vit']}; "
                       f"systems={len(self.identifier.systems)}",
        )

    def detect_parts(self, image: np.ndarray, threshold: float | None = None) -> list[ImplantPart]:
        """Stage 1 on a ``(rows, cols)`` image in [0, 1]: design parts in source pixels.

        ``threshold`` overrides :attr:`part_threshold` (a lower floor lets a caller cache
        stage 1 once and try several operating points on it).
        """
        floor = self.part_threshold if threshold is None else threshold
        boxes, scores, labels = detect_in_windows(self.detector, image, self.size, device=self.device,
                                                  threshold=floor)
        return [ImplantPart(PART_CLASSES[int(label)], tuple(float(v) for v in box), float(score))
                for box, score, label in zip(boxes, scores, labels, strict=True)]

    @property
    def part_threshold(self) -> float:
        """Stage-1 score floor of :attr:`operating_point`."""
        return self.operating_point.part_threshold

    @property
    def finding_threshold(self) -> float:
        """Score floor of reported implants of :attr:`operating_point`."""
        return self.operating_point.finding_threshold

    def group(self, parts: list[ImplantPart], image_shape: tuple[int, ...]) -> list[ImplantGroup]:
        """Stage 2 without identification: parts at or above :attr:`part_threshold`, one
        per region, grouped into implants, duplicate implants suppressed, left to right."""
        kept = suppress_part_overlaps([p for p in parts if p.score >= self.part_threshold],
                                      self.operating_point.part_nms_iou)
        groups = group_parts(kept, image_shape=(int(image_shape[0]), int(image_shape[1])))
        return suppress_overlaps(groups, self.operating_point.group_nms_iou)

    @torch.no_grad()
    def identify_box(self, image: np.ndarray, box: tuple[float, float, float, float], *,
                     parts: list[ImplantPart] | None = None) -> ImplantFinding:
        """An implant a person boxed on a ``(rows, cols)`` image in [0, 1].

        Its parts are the stage-1 parts (``parts``, else detected now at
        :attr:`part_threshold`) whose centre lies in ``box`` (:func:`parts_in_box`). With
        two or more of them, its axis runs from the first to the last (coronal, middle,
        apical), as :meth:`detect` orients an implant, and orients the crop; with only the
        coronal or the apical part, the half of the box it lies in does; with neither, on a
        panoramic (at least :data:`PANORAMIC_ASPECT` times as wide as high) the half of the
        image the box lies in does (the upper jaw's implants have their apex up); else both
        ways up are identified and the more confident one kept, which can be the wrong one.
        Its system and design are the identifier's for the crop. ``score`` is 1.0: the
        box is a person's, not a detection.
        """
        if parts is None:
            parts = self.detect_parts(image)
        inside = parts_in_box(parts, box)
        axis = None
        centre_y = (box[1] + box[3]) / 2
        if len(inside) >= 2:
            (a0, a1, a2, a3), (b0, b1, b2, b3) = inside[0].box, inside[-1].box
            axis = ((a0 + a2) / 2, (a1 + a3) / 2, (b0 + b2) / 2, (b1 + b3) / 2)
            crops = [finding_crop(image, box, axis)]
        elif inside and inside[0].label in ("coronal", "apical"):  # one end found: which half it is in
            part_y = (inside[0].box[1] + inside[0].box[3]) / 2
            crops = [crop_implant(image, box, coronal_on_top=(part_y < centre_y) == (inside[0].label == "coronal"))]
        elif image.shape[1] >= PANORAMIC_ASPECT * image.shape[0]:  # a panoramic: the upper jaw is the upper half
            crops = [crop_implant(image, box, coronal_on_top=centre_y >= image.shape[0] / 2)]
        else:
            crops = [crop_implant(image, box, coronal_on_top=True), crop_implant(image, box, coronal_on_top=False)]
        identities = self.identifier.identify(torch.from_numpy(np.stack(crops))[:, None].to(self.device))
        identity = max(identities, key=lambda found: found["systems"][0][1] if found["systems"] else 0.0)
        return ImplantFinding(box=tuple(float(v) for v in box), score=1.0, parts=inside,
                              attributes=dict(identity["attributes"]), system_top=tuple(identity["systems"]),
                              axis=axis)

    def detect(self, image: np.ndarray, *, parts: list[ImplantPart] | None = None,
               finding_threshold: float | None = None) -> RadiographResult:
        """Find, group and identify implants on a ``(rows, cols)`` float image in [0, 1].

        ``parts`` may pass stage-1 results already computed by :meth:`detect_parts`;
        ``finding_threshold`` overrides :attr:`finding_threshold`.
        """
        min_score = self.finding_threshold if finding_threshold is None else finding_threshold
        if image.ndim != 2:
            raise ValueError(f"expected a (rows, cols) radiograph, got shape {image.shape}")
        if parts is None:
            parts = self.detect_parts(image)
        groups = [g for g in self.group(parts, image.shape) if g.score >= min_score]
        findings: list[ImplantFinding] = []
        if groups:
            axes = [_axis(g) for g in groups]
            crops = [finding_crop(image, g.box, axis) for g, axis in zip(groups, axes, strict=True)]
            batch = torch.from_numpy(np.stack(crops))[:, None].to(self.device)
            for group, axis, identity in zip(groups, axes, self.identifier.identify(batch), strict=True):
                findings.append(ImplantFinding(
                    box=group.box, score=group.score, parts=group.parts,
                    attributes=dict(identity["attributes"]), system_top=tuple(identity["systems"]),
                    axis=axis,
                ))
        return RadiographResult(findings=findings, image_shape=(int(image.shape[0]), int(image.shape[1])),
                                algorithm=self.info)
