"""The learned implant runtime (seed 002) through the radiograph workflow, on bad inputs too.

Every radiograph goes through :func:`process_radiograph_instance` with the runtime the
registry builds from the bundled ``models/implants``. Images are training phantoms
(:mod:`dicom_service.training.radiograph_phantoms`) wrapped by
:func:`tests.builders.make_radiograph_from_scene`, so the model sees exactly the
``scene.image / 4095`` it was trained on. Scene seeds ``10_000 + k`` are never in a
training set: :func:`dicom_service.training.coco.scene_seed` draws 63-bit seeds from
sha256. Boxes are ``(x0, y0, x1, y1)``, x = column, y = row.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code

from tests.dicomcheck import in_ci, require_module, run_dciodvfy

torch = require_module("torch")
require_module("torchvision")
require_module("safetensors")

from dicom_service.domain import InputError, RadiographResult, UnsupportedInputError  # noqa: E402
from dicom_service.media.pixels import load_radiograph  # noqa: E402
from dicom_service.pipelines.base import ResultObject  # noqa: E402
from dicom_service.pipelines.radiograph import process_radiograph_instance  # noqa: E402
from dicom_service.training.radiograph_phantoms import render_panoramic, render_periapical  # noqa: E402
from dicom_service.training.radiograph_scene import RadiographScene  # noqa: E402
from dicom_service.vision.implant_identifier import crop_implant  # noqa: E402
from dicom_service.vision.implant_runtime import LearnedImplantRuntime  # noqa: E402
from dicom_service.vision.part_detector import PART_CLASSES  # noqa: E402
from dicom_service.vision.registry import build_radiograph_runtime, default_models_dir  # noqa: E402
from tests import builders  # noqa: E402

Box = tuple[float, float, float, float]
IMPLANT = Code("40388003", "SCT", "Implant")
ABSENT = Code("2667000", "SCT", "Absent")
MIN_IOU = 0.5
UNSEEN_SEEDS = [10_000 + k for k in range(4)]
HUGE_SHAPE = (4000, 8000)  # rows, cols
#: Bound on the peak of traced (numpy/Python) allocations while loading, detecting and
#: writing the results of the huge image (its 16-bit pixel data alone is 64 MB, a float32
#: copy 128 MB, the burned-in RGB capture 96 MB); about 0.85 GiB was measured.
HUGE_PEAK_BYTES = 3 * 1024 ** 3 // 2


@pytest.fixture(scope="module")
def models_dir() -> Path:
    """The folder holding ``implants/`` (the one line to change to try another bundle)."""
    return default_models_dir()


@pytest.fixture(scope="module")
def runtime(models_dir: Path) -> LearnedImplantRuntime:
    """The learned runtime, loaded once per module through the registry, on CPU."""
    if not (models_dir / "implants" / "config.json").is_file():
        message = f"no trained implant bundle in {models_dir / 'implants'}"
        if in_ci():
            pytest.fail(f"{message}; it is required when CI=true", pytrace=False)
        pytest.skip(message)
    built = build_radiograph_runtime("implants", "cpu", models_dir)
    assert isinstance(built, LearnedImplantRuntime)
    return built


@dataclass
class Processed:
    """One radiograph through the workflow: its source, truth and results."""

    scene: RadiographScene
    source: pydicom.Dataset
    objects: list[ResultObject]
    summary: dict

    def kinds(self) -> list[str]:
        return [o.kind for o in self.objects]

    def dataset(self, kind: str) -> pydicom.Dataset:
        return next(o.dataset for o in self.objects if o.kind == kind)


def _process(runtime: LearnedImplantRuntime, scene: RadiographScene, **dicom: object) -> Processed:
    source = builders.make_radiograph_from_scene(scene, **dicom)  # type: ignore[arg-type]
    objects, summary = process_radiograph_instance(source, runtime, uid_seed=f"test/{scene.scene_id}")
    return Processed(scene, source, objects, summary)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(truth: Sequence[Box], found: Sequence[Sequence[float]]) -> list[float]:
    """Greedy one-to-one matching by IoU: the best IoU reached by each truth box (0: missed)."""
    pairs = sorted(((_iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    best = [0.0] * len(truth)
    used_t: set[int] = set()
    used_f: set[int] = set()
    for iou, i, j in pairs:
        if iou > 0 and i not in used_t and j not in used_f:
            best[i] = iou
            used_t.add(i)
            used_f.add(j)
    return best


def _boxes(summary: dict) -> list[list[float]]:
    return [f["box_xyxy"] for f in summary["implants"]]


def _detail(p: Processed) -> str:
    return f"{p.scene.scene_id}: truth {[imp.box for imp in p.scene.implants]}, found {_boxes(p.summary)}"


def _assert_found(p: Processed) -> None:
    """Every true implant is matched one-to-one by a finding with IoU >= :data:`MIN_IOU`."""
    ious = _match([imp.box for imp in p.scene.implants], _boxes(p.summary))
    assert all(iou >= MIN_IOU for iou in ious), f"IoU {ious} < {MIN_IOU}; {_detail(p)}"


@pytest.fixture(scope="module")
def with_implants(runtime: LearnedImplantRuntime) -> Processed:
    """A 12-bit MONOCHROME2 periapical with two implants, processed once."""
    return _process(runtime, render_periapical(10_010, implants=2))


# ------------------------------------------------------------------------- (a) no implant
@pytest.mark.parametrize("seed", [10_020, 10_021])
def test_periapical_without_implant_reports_none_found(
    runtime: LearnedImplantRuntime, seed: int, tmp_path: Path,
) -> None:
    p = _process(runtime, render_periapical(seed, implants=0))
    assert p.scene.implants == []
    assert p.summary["none_found"] is True, f"false positives: {p.summary['implants']}"
    assert p.summary["implants"] == []
    assert p.kinds() == ["sr", "pr", "sc"]  # no SEG without findings
    sr = hd.sr.srread(builders.save(p.dataset("sr"), tmp_path / "sr.dcm"))
    assert sr.content.get_planar_roi_measurement_groups() == []
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1 and groups[0].tracking_identifier == "No implant found"
    evaluations = groups[0].get_qualitative_evaluations(name=IMPLANT)
    assert [e.value for e in evaluations] == [ABSENT]


# --------------------------------------------------------------------- (b) 16 bits stored
@pytest.fixture(scope="module")
def sixteen_bit(runtime: LearnedImplantRuntime) -> dict[int, Processed]:
    """Unseen periapicals with 1 or 2 implants, stored with 16 bits, processed once."""
    return {seed: _process(runtime, render_periapical(seed, implants=1 + seed % 2), bits_stored=16)
            for seed in UNSEEN_SEEDS}


@pytest.mark.parametrize("seed", UNSEEN_SEEDS)
def test_16_bit_radiograph_implants_are_found(sixteen_bit: dict[int, Processed], seed: int) -> None:
    p = sixteen_bit[seed]
    assert p.scene.implants, "the phantom must hold an implant"
    assert p.source.BitsStored == 16 and int(p.source.pixel_array.max()) > 4095
    assert p.summary["none_found"] is False
    _assert_found(p)


def test_each_implant_is_reported_once(sixteen_bit: dict[int, Processed]) -> None:
    for p in sixteen_bit.values():
        assert len(p.summary["implants"]) == len(p.scene.implants), f"extra findings; {_detail(p)}"


# ------------------------------------------------------------------------ (c) MONOCHROME1
def test_monochrome1_gives_the_same_findings_as_monochrome2(
    runtime: LearnedImplantRuntime, with_implants: Processed,
) -> None:
    m1 = _process(runtime, with_implants.scene, photometric="MONOCHROME1")
    m2 = with_implants
    assert m1.source.PhotometricInterpretation == "MONOCHROME1"
    assert not np.array_equal(m1.source.pixel_array, m2.source.pixel_array)
    np.testing.assert_allclose(load_radiograph(m1.source), load_radiograph(m2.source), atol=1e-6)
    assert m2.summary["implants"], "the MONOCHROME2 image must give findings to compare"
    assert len(m1.summary["implants"]) == len(m2.summary["implants"])
    for a, b in zip(m1.summary["implants"], m2.summary["implants"], strict=True):
        np.testing.assert_allclose(a["box_xyxy"], b["box_xyxy"], atol=0.5)
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
        assert a["attributes"] == b["attributes"] and a["parts"] == b["parts"]
        assert [n for n, _ in a["system_top"]] == [n for n, _ in b["system_top"]]


# ------------------------------------------------------------------- (d) huge panoramic
def _upscaled_panoramic(seed: int, shape: tuple[int, int]) -> RadiographScene:
    """A default 1000 x 2000 panoramic phantom resized to ``shape``, boxes scaled alike."""
    scene = render_panoramic(seed)
    rows, cols = scene.image.shape
    sy, sx = shape[0] / rows, shape[1] / cols
    image = cv2.resize(scene.image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    for imp in scene.implants:
        imp.box = (imp.box[0] * sx, imp.box[1] * sy, imp.box[2] * sx, imp.box[3] * sy)
    return RadiographScene(image=image, kind="panoramic-upscaled", seed=seed,
                           pixel_mm=scene.pixel_mm / sx, implants=scene.implants)


def test_huge_panoramic_completes_with_boxes_inside(runtime: LearnedImplantRuntime) -> None:
    scene = _upscaled_panoramic(10_030, HUGE_SHAPE)
    rows, cols = HUGE_SHAPE
    assert scene.image.shape == HUGE_SHAPE and scene.implants
    tracemalloc.start()
    try:
        p = _process(runtime, scene, modality="PX")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < HUGE_PEAK_BYTES, f"traced peak {peak / 2 ** 20:.0f} MiB"
    assert (p.summary["rows"], p.summary["columns"]) == HUGE_SHAPE
    assert p.summary["implants"], "no implant found on the huge panoramic"
    for x0, y0, x1, y1 in _boxes(p.summary):
        assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows
    seg = p.dataset("seg")
    assert (seg.Rows, seg.Columns) == HUGE_SHAPE
    ious = _match([imp.box for imp in scene.implants], _boxes(p.summary))
    assert sum(iou >= MIN_IOU for iou in ious) >= len(ious) / 2, f"IoU {ious}"


# ------------------------------------------------------------------------- (e) colour photo
def test_colour_photo_routed_as_radiograph_is_a_clear_error(runtime: LearnedImplantRuntime) -> None:
    photo = builders.make_colour_photo_as_dx(rows=120, cols=160)
    with pytest.raises(UnsupportedInputError,
                       match=r"a colour photograph \(RGB, 3 samples per pixel\) cannot be a radiograph"
                       ) as caught:
        process_radiograph_instance(photo, runtime, uid_seed="test/colour")
    assert isinstance(caught.value, InputError)  # a job fails at once, without retries
    with pytest.raises(ValueError, match=r"expected a \(rows, cols\) radiograph"):
        runtime.detect(np.zeros((120, 160, 3), np.float32))


# ------------------------------------------------------- identification and result objects
def test_findings_carry_calibrated_top3_systems_and_attributes(
    runtime: LearnedImplantRuntime, with_implants: Processed,
) -> None:
    image = load_radiograph(with_implants.source)
    result: RadiographResult = runtime.detect(image)
    assert result.findings and result.image_shape == image.shape
    assert result.algorithm.family == "ai"
    systems = runtime.identifier.systems
    attributes = runtime.config["attributes"]
    temperature = float(runtime.identifier.temperature)
    assert temperature == pytest.approx(runtime.config["temperature"]) and temperature > 0
    for finding in result.findings:
        assert 0.0 <= finding.score <= 1.0
        assert {part.label for part in finding.parts} <= set(PART_CLASSES) - {"background"}
        names = [name for name, _ in finding.system_top]
        probabilities = [p for _, p in finding.system_top]
        assert len(names) == min(3, len(systems)) == len(set(names)) and set(names) <= set(systems)
        assert all(0.0 < p <= 1.0 for p in probabilities)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0 + 1e-6
        assert set(finding.attributes) == set(attributes)
        assert all(finding.attributes[k] in attributes[k] for k in attributes)
        # the reported probabilities are the temperature-scaled softmax of the identifier
        upright = finding.axis is None or finding.axis[3] >= finding.axis[1]
        crop = torch.from_numpy(crop_implant(image, finding.box, coronal_on_top=upright))[None, None]
        with torch.no_grad():
            logits, _ = runtime.identifier(crop)
        calibrated = torch.softmax(logits[0] / temperature, dim=0)
        for name, p in finding.system_top:
            assert p == pytest.approx(float(calibrated[systems.index(name)]), abs=1e-5)
    summary = with_implants.summary["implants"]
    assert [f["system_top"][0][0] for f in summary] == [f.system_top[0][0] for f in result.findings]


def test_result_objects_pass_dciodvfy(with_implants: Processed, tmp_path: Path) -> None:
    assert with_implants.kinds() == ["seg", "sr", "pr", "sc"]
    for obj in with_implants.objects:
        path = builders.save(obj.dataset, tmp_path / f"{obj.kind}.dcm")
        assert run_dciodvfy(path) == [], obj.kind
        back = pydicom.dcmread(path)
        assert back.StudyInstanceUID == with_implants.source.StudyInstanceUID
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    groups = sr.content.get_planar_roi_measurement_groups(finding_type=IMPLANT)
    assert len(groups) == len(with_implants.summary["implants"])
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    labels = {label for f in with_implants.summary["implants"] for label in f["parts"]}
    assert seg.number_of_segments == 1 + len(labels)  # all implants, then one per part label


def test_a_drawn_box_is_identified_the_right_way_up(runtime: LearnedImplantRuntime) -> None:
    """``identify_box`` on the upper-jaw implants (apex up) of a panoramic phantom: with all
    their parts, with the coronal or the apical part missing (as for an implant the AI
    missed) and with none, the crop is turned platform up and the true system named."""
    scene = render_panoramic(10_000, implants=6)
    image = np.clip(scene.image / 4095.0, 0, 1).astype(np.float32)
    parts = runtime.detect_parts(image)
    upper = [implant for implant in scene.implants if implant.axis[3] < implant.axis[1]]
    assert len(upper) >= 2
    for implant in upper:
        box = tuple(float(v) for v in implant.box)
        for missing in (None, "coronal", "apical", "all"):
            kept = [p for p in parts if missing != "all" and p.label != missing]
            found = runtime.identify_box(image, box, parts=kept)
            assert found.system_top[0][0] == implant.system, (box, missing, found.system_top[:1])
            assert found.origin == "ai" and found.score == 1.0  # the pipeline marks it as a person's
