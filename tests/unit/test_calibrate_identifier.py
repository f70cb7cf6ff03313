"""Temperature calibration on the crops of detected implants (bundled ``models/implants``).

The phantoms come from :func:`dicom_service.training.coco.generate_dataset` with a seed no
training set used, every image put in the validation split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.dicomcheck import require_module

torch = require_module("torch")
require_module("torchvision")
require_module("safetensors")

from dicom_service.training.calibrate_identifier import calibrate_on_detections, detected_crops  # noqa: E402
from dicom_service.training.coco import generate_dataset, load_coco  # noqa: E402
from dicom_service.training.implant_data import read_radiograph  # noqa: E402
from dicom_service.vision.implant_identifier import TEMPERATURE_BOUNDS  # noqa: E402
from dicom_service.vision.implant_runtime import LearnedImplantRuntime, finding_crop  # noqa: E402
from dicom_service.vision.registry import default_models_dir  # noqa: E402


@pytest.fixture(scope="module")
def coco_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = generate_dataset(tmp_path_factory.mktemp("calibration"), periapical=10, panoramic=0, seed=23)
    doc = json.loads(path.read_text())
    for image in doc["images"]:
        image["split"] = "val"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture()
def runtime() -> LearnedImplantRuntime:
    return LearnedImplantRuntime(default_models_dir() / "implants", "cpu")


def test_detected_crops_are_the_runtime_crops_of_covered_implants(coco_path: Path,
                                                                   runtime: LearnedImplantRuntime) -> None:
    coco = load_coco(coco_path)
    crops, targets = detected_crops(runtime, coco, split="val")
    systems = list(runtime.identifier.systems)
    expected_crops, expected_targets = [], []
    for info in sorted(coco.split("val"), key=lambda im: im.id):
        image = read_radiograph(info)
        findings = runtime.detect(image).findings
        for ann in coco.for_image(info.id):
            if ann.category != "implant" or ann.system is None:
                continue
            best = max(findings, key=lambda f: _iou(f.box, ann.box), default=None)
            if best is not None and _iou(best.box, ann.box) >= 0.5:
                expected_crops.append(finding_crop(image, best.box, best.axis))
                expected_targets.append(systems.index(ann.system))
    assert len(targets) == len(expected_targets) >= 5  # the bundled model finds most implants
    assert crops.shape == (len(targets), 192, 64) and crops.dtype == np.float32
    assert targets.tolist() == expected_targets
    assert np.array_equal(crops, np.stack(expected_crops))
    with pytest.raises(ValueError, match="test split"):
        detected_crops(runtime, coco, split="test")
    empty, none = detected_crops(runtime, coco, split="train")
    assert empty.shape == (0, 192, 64) and none.shape == (0,)


def test_calibration_fits_a_bounded_temperature_that_lowers_the_nll(coco_path: Path,
                                                                    runtime: LearnedImplantRuntime) -> None:
    coco = load_coco(coco_path)
    before = float(runtime.identifier.temperature)
    report = calibrate_on_detections(runtime, coco, split="val", min_crops=5)
    assert report["fitted_on"] == "detected boxes" and report["crops"] >= 5
    t = float(runtime.identifier.temperature)
    assert report["temperature"] == pytest.approx(t, rel=1e-5) and report["previous"] == pytest.approx(before)
    assert TEMPERATURE_BOUNDS[0] <= t <= TEMPERATURE_BOUNDS[1]
    assert report["nll_after"] <= report["nll_before"] + 1e-4
    assert 0.0 <= report["top1"] <= 1.0
    # the findings now carry the newly calibrated probabilities
    info = next(im for im in coco.split("val") if any(a.category == "implant" for a in coco.for_image(im.id)))
    image = read_radiograph(info)
    for finding in runtime.detect(image).findings:
        crop = torch.from_numpy(finding_crop(image, finding.box, finding.axis))[None, None]
        with torch.no_grad():
            probabilities = torch.softmax(runtime.identifier(crop)[0][0] / t, dim=0)
        name, p = finding.system_top[0]
        assert p == pytest.approx(float(probabilities[runtime.identifier.systems.index(name)]), abs=1e-5)


def test_too_few_detections_keep_the_true_box_temperature(coco_path: Path, runtime: LearnedImplantRuntime) -> None:
    before = float(runtime.identifier.temperature)
    report = calibrate_on_detections(runtime, load_coco(coco_path), split="val", min_crops=10_000)
    assert report["fitted_on"] == "true boxes" and report["at_bound"] is False
    assert float(runtime.identifier.temperature) == before == report["temperature"]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0
