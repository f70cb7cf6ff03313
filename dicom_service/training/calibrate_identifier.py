"""Fit the implant identifier's temperature on the crops the node will really cut.

The identifier is trained on crops of annotated implant boxes, but the node crops the
boxes stage 2 builds from detected parts, which are looser. Its system probabilities are
what a clinic reads, so ``train implants`` calibrates them on that distribution: after the
operating point is chosen, stage 1 and 2 run on every validation image, each annotated
implant that a reported finding covers (IoU ≥ 0.5) is cut at the finding's box the way
:meth:`~dicom_service.vision.implant_runtime.LearnedImplantRuntime.detect` cuts it, and the
temperature minimising the NLL of its system is fitted there
(:func:`~dicom_service.vision.implant_identifier.fit_temperature`, bounded).

Like the threshold search, it refuses the test split that ``eval implants`` reports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dicom_service.training.coco import CocoDataset
from dicom_service.training.evaluate_implants import covering_findings
from dicom_service.vision.implant_identifier import CROP_SHAPE, TEMPERATURE_BOUNDS, fit_temperature
from dicom_service.vision.implant_runtime import LearnedImplantRuntime, finding_crop

MIN_CROPS = 20
"""Fewer matched detections than this keep the temperature fitted on the true boxes."""


def detected_crops(runtime: LearnedImplantRuntime, coco: CocoDataset, *, split: str = "val",
                   limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the reported findings that cover an annotated implant with a known system.

    Parameters
    ----------
    runtime : LearnedImplantRuntime
        At its operating point (the findings reported are those at or above its floor).
    coco : CocoDataset
    split : str
        Not ``"test"``.
    limit : int, optional
        First N images of the split.

    Returns
    -------
    crops : np.ndarray
        ``(N, 192, 64)`` float32 identifier inputs, one per covered implant (the finding of
        highest IoU with it).
    targets : np.ndarray
        ``(N,)`` int64 system indices into ``runtime.identifier.systems``.

    Raises
    ------
    ValueError
        ``split`` is ``"test"``.
    """
    from dicom_service.training.implant_data import read_radiograph

    if split == "test":
        raise ValueError("the temperature must not be fitted on the test split that eval implants reports")
    systems = list(runtime.identifier.systems)
    crops: list[np.ndarray] = []
    targets: list[int] = []
    for info in sorted(coco.split(split), key=lambda im: im.id)[:limit]:
        truth = [a for a in coco.for_image(info.id) if a.category == "implant" and a.system in systems]
        if not truth:
            continue
        image = read_radiograph(info)
        found = runtime.detect(image).findings
        covers = covering_findings(np.array([a.box for a in truth], dtype=float), [f.box for f in found])
        for ann, j in zip(truth, covers, strict=True):
            if j is not None:
                crops.append(finding_crop(image, found[j].box, found[j].axis))
                targets.append(systems.index(ann.system))
    stacked = np.stack(crops) if crops else np.zeros((0, *CROP_SHAPE), np.float32)
    return stacked, np.array(targets, dtype=np.int64)


@torch.no_grad()
def calibrate_on_detections(runtime: LearnedImplantRuntime, coco: CocoDataset, *, split: str = "val",
                            limit: int | None = None, min_crops: int = MIN_CROPS) -> dict:
    """Fit and set ``runtime.identifier.temperature`` on :func:`detected_crops`.

    With fewer than ``min_crops`` crops the temperature already set (fitted on the true
    boxes when the identifier was trained) is kept.

    Returns
    -------
    dict
        ``{"fitted_on", "split", "crops", "temperature", "previous", "bounds", "at_bound",
        "top1", "nll_before", "nll_after"}``; ``fitted_on`` is ``"detected boxes"`` or, when
        kept, ``"true boxes"`` (then the NLL and top-1 are on the few crops there were, or
        None).
    """
    identifier = runtime.identifier
    previous = float(identifier.temperature)
    crops, targets = detected_crops(runtime, coco, split=split, limit=limit)
    fitted = len(targets) >= min_crops
    report: dict = {"split": split, "crops": int(len(targets)), "previous": round(previous, 6),
                    "bounds": list(TEMPERATURE_BOUNDS), "fitted_on": "detected boxes" if fitted else "true boxes",
                    "temperature": previous, "at_bound": False, "top1": None, "nll_before": None, "nll_after": None}
    if not len(targets):
        return report
    batch = torch.from_numpy(crops)[:, None].to(runtime.device)
    logits = torch.cat([identifier(chunk)[0] for chunk in batch.split(64)]).float().cpu()
    y = torch.from_numpy(targets)
    temperature = fit_temperature(logits, y) if fitted else previous
    identifier.temperature.fill_(temperature)
    return {**report, "top1": round(float((logits.argmax(1) == y).float().mean()), 4),
            "nll_before": round(float(F.cross_entropy(logits / previous, y)), 4),
            "nll_after": round(float(F.cross_entropy(logits / temperature, y)), 4),
            "temperature": round(temperature, 6) if fitted else previous,
            "at_bound": fitted and any(abs(temperature - b) <= 1e-6 * b for b in TEMPERATURE_BOUNDS)}
