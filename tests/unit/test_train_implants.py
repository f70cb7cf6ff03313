"""Implant training data sets, loops, safetensors bundle and the ``train implants`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.dicomcheck import require_module

torch = require_module("torch")
require_module("safetensors")

from dicom_service.cli import main  # noqa: E402
from dicom_service.training.coco import CocoDataset, generate_dataset, load_coco  # noqa: E402
from dicom_service.training.implant_data import (  # noqa: E402
    ImplantCropDataset,
    PartDetectionDataset,
    UnlabelledImages,
    collate_detection,
    label_space,
)
from dicom_service.training.train_implants import warmup_cosine  # noqa: E402
from dicom_service.vision.implant_bundle import load_bundle, save_bundle  # noqa: E402
from dicom_service.vision.implant_identifier import CROP_SHAPE, ImplantIdentifier  # noqa: E402
from dicom_service.vision.part_detector import build_part_detector  # noqa: E402
from dicom_service.vision.vit import VIT_SIZES, ViTEncoder  # noqa: E402


@pytest.fixture(scope="module")
def coco_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 periapical + 1 panoramic phantoms; the first periapical with an implant moved to ``val``."""
    path = generate_dataset(tmp_path_factory.mktemp("implants"), periapical=4, panoramic=1, seed=3)
    doc = json.loads(path.read_text())
    with_implants = {a["image_id"] for a in doc["annotations"]}
    periapical = [im for im in doc["images"] if im["kind"] == "periapical" and im["id"] in with_implants]
    periapical[0]["split"] = "val"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def coco(coco_path: Path) -> CocoDataset:
    return load_coco(coco_path)


def _check_masks_in_boxes(target: dict[str, torch.Tensor], tolerance: float = 1.0) -> None:
    for box, mask in zip(target["boxes"].tolist(), target["masks"].numpy(), strict=True):
        rows, cols = np.nonzero(mask)
        assert len(rows) > 0
        assert cols.min() >= box[0] - tolerance and cols.max() + 1 <= box[2] + tolerance
        assert rows.min() >= box[1] - tolerance and rows.max() + 1 <= box[3] + tolerance


def test_detection_items(coco: CocoDataset) -> None:
    ds = PartDetectionDataset(coco, "train", img_size=416)
    assert len(ds) > len(coco.split("train")) >= 2  # the panoramic image gives several tiles
    n_parts = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (1, 416, 416) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and masks.dtype == torch.uint8
        assert masks.shape == (len(boxes), 416, 416) and labels.shape == (len(boxes),)
        if len(boxes):
            assert set(labels.tolist()) <= {1, 2, 3}
            assert bool((boxes >= 0).all() and (boxes <= 416).all())
            assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
            _check_masks_in_boxes(target)
        n_parts += len(boxes)
    assert n_parts > 0
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2


def test_periapical_is_letterboxed_and_panoramic_is_tiled(coco: CocoDataset) -> None:
    ds = PartDetectionDataset(coco, "train", img_size=128)
    tiles = 0
    for i, (info, window) in enumerate(ds.items):
        image, target = ds[i]
        parts = [a for a in coco.for_image(info.id) if a.category != "implant"]
        if info.width == info.height:  # one window: the whole image scaled to 128
            assert window.side == info.width
            expected = torch.tensor([a.box for a in parts], dtype=torch.float32).reshape(-1, 4) * window.scale
            assert torch.allclose(target["boxes"], expected, atol=1e-4)
            continue
        tiles += 1  # panoramic 2000 x 1000: 1000 x 1000 tiles, as the runtime cuts them
        assert window.side == min(info.width, info.height) and float(image.max()) > 0.1
        origin = torch.tensor([window.x0, window.y0] * 2, dtype=torch.float32)
        for box in target["boxes"]:
            source = box / window.scale + origin
            assert any(float(torchvision_iou(source, torch.tensor(a.box, dtype=torch.float32))) > 0.49
                       for a in parts)
    assert tiles >= 3
    full = PartDetectionDataset(coco, "train", img_size=416)
    square = next(i for i, (im, _) in enumerate(full.items) if im.width == im.height == 416 and coco.for_image(im.id))
    raw = [a.box for a in coco.for_image(full.items[square][0].id) if a.category != "implant"]
    assert full[square][1]["boxes"].tolist() == torch.tensor(raw, dtype=torch.float32).tolist()
    implants = PartDetectionDataset(coco, "train", img_size=128, categories=("background", "implant"))
    assert {int(v) for i in range(len(implants)) for v in implants[i][1]["labels"]} == {1}


def torchvision_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(a[None], b[None])[0, 0]


def test_augmentation_keeps_boxes_and_masks_together(coco: CocoDataset) -> None:
    ds = PartDetectionDataset(coco, "train", img_size=128, augment=True)
    plain = PartDetectionDataset(coco, "train", img_size=128)
    periapical = next(i for i, (im, _) in enumerate(ds.items) if im.width == im.height and coco.for_image(im.id))
    rotated = 0
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = ds[periapical]
        assert image.shape == (1, 128, 128)
        _check_masks_in_boxes(target)
        assert bool((target["boxes"] >= 0).all() and (target["boxes"] <= 128).all())
        widths = target["boxes"][:, 2] - target["boxes"][:, 0]
        heights = target["boxes"][:, 3] - target["boxes"][:, 1]
        rotated += int(widths.sum() > heights.sum())  # implants are vertical until rotated by 90 degrees
        same_area = sorted(target["masks"].flatten(1).sum(1).tolist())
        assert same_area == sorted(plain[periapical][1]["masks"].flatten(1).sum(1).tolist())
    assert 0 < rotated < 8
    torch.manual_seed(0)
    first = ds[periapical][0]
    torch.manual_seed(0)
    assert torch.equal(first, ds[periapical][0])  # repeatable from torch's seed


def test_crops_and_unlabelled(coco: CocoDataset) -> None:
    systems, attributes = label_space(coco)
    assert systems and "apex" in attributes
    crops = ImplantCropDataset(coco, "train", systems, attributes)
    assert len(crops) == sum(1 for im in coco.split("train") for a in coco.for_image(im.id) if a.category == "implant")
    flipped = [upright for _, _, upright in crops.items]
    assert True in flipped and False in flipped  # panoramic: mandible upright, maxilla flipped
    crop, system, labels = crops[0]
    assert crop.shape == (1, *CROP_SHAPE) and crop.dtype == torch.float32
    assert 0 <= system < len(systems) and set(labels) == set(attributes)
    assert all(0 <= v < len(attributes[k]) for k, v in labels.items())
    with pytest.raises(ValueError, match="system"):
        ImplantCropDataset(coco, "train", systems[:1], attributes)
    images = UnlabelledImages(coco, "train", img_size=64, augment=True)
    assert len(images) == len(PartDetectionDataset(coco, "train", img_size=64)) and images[0].shape == (1, 64, 64)


def test_warmup_cosine_schedule() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[-1] < 0.02
    short = warmup_cosine(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 2, 10)
    assert short.get_last_lr() == [1.0]  # warm-up capped at half the run (here 1 step)


def _small_models() -> tuple[torch.nn.Module, ImplantIdentifier]:
    torch.manual_seed(5)
    detector = build_part_detector(ViTEncoder(VIT_SIZES["test"]))
    identifier = ImplantIdentifier(["a", "b"], {"apex": ["flat", "domed"]}, width=8)
    identifier.temperature.fill_(1.7)
    return detector.eval(), identifier.eval()


def test_bundle_round_trip_is_bit_exact(tmp_path: Path) -> None:
    detector, identifier = _small_models()
    path = save_bundle(tmp_path, detector, identifier, {"init": "random", "seed": 5})
    config = json.loads(path.read_text())
    assert config["vit"]["img_size"] == 64 and config["temperature"] == pytest.approx(1.7)
    assert len(config["weights"]["detector"]["sha256"]) == 64
    det2, ident2, config2 = load_bundle(tmp_path, "cpu")
    assert config2 == config
    for a, b in ((detector, det2), (identifier, ident2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(detector.backbone(x[None])["0"], det2.backbone(x[None])["0"])
        out1, out2 = detector([x])[0], det2([x])[0]
        assert all(torch.equal(out1[k], out2[k]) for k in out1)
    crops = torch.rand(2, 1, *CROP_SHAPE, generator=torch.Generator().manual_seed(1))
    assert identifier.identify(crops) == ident2.identify(crops)
    weights = tmp_path / "identifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        load_bundle(tmp_path, "cpu")


def test_train_implants_cli_smoke(coco_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    argv = ["train", "implants", "--coco", str(coco_path), "--out", str(out), "--vit", "test", "--img-size", "64",
            "--pretrain-epochs", "1", "--epochs", "1", "--identifier-epochs", "1", "--limit-images", "4",
            "--device", "cpu", "--seed", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["images"]["val"] == 1 and summary["crops"]["val"] >= 1
    stages = [stage for stage in stages_all(captured.err) if stage != "calibration"]
    assert stages == ["pretrain", "detector", "identifier"]
    config = json.loads((out / "config.json").read_text())
    for key in ("vit", "init", "mask_ratio", "systems", "attributes", "part_classes", "temperature", "command",
                "dataset", "seed", "weights"):
        assert key in config, key
    assert config["init"] == "mde" and config["vit"]["img_size"] == 64 and config["mask_ratio"] == 0.25
    assert config["command"].startswith("dicom-service train implants --coco ")
    assert config["identifier_training"]["temperature_fitted"] is True
    assert config["calibration"]["split"] == "val" and "calibration" in stages_all(captured.err)
    assert {p.name for p in out.iterdir()} == {"config.json", "detector.safetensors", "identifier.safetensors"}
    detector, identifier, _ = load_bundle(out, "cpu")
    image = PartDetectionDataset(load_coco(coco_path), "val", img_size=64)[0][0]
    with torch.no_grad():
        result = detector([image])[0]
    assert set(result) >= {"boxes", "labels", "scores", "masks"}
    assert identifier.temperature.item() == pytest.approx(config["temperature"])
    assert main(argv[:2] + ["--coco", str(coco_path), "--out", str(out), "--img-size", "40"]) == 2


def test_only_one_model_keeps_the_other(coco_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    out = tmp_path / "bundle"
    small = ["--vit", "test", "--img-size", "64", "--pretrain-epochs", "0", "--epochs", "1", "--identifier-epochs",
             "1", "--limit-images", "4", "--device", "cpu"]
    assert main(["train", "implants", "--coco", str(coco_path), "--out", str(tmp_path / "empty"), *small,
                 "--only", "identifier"]) == 2
    assert "needs a bundle" in capsys.readouterr().err
    assert main(["train", "implants", "--coco", str(coco_path), "--out", str(out), *small]) == 0
    before = json.loads((out / "config.json").read_text())
    assert main(["train", "implants", "--coco", str(coco_path), "--out", str(out), *small, "--seed", "9",
                 "--only", "identifier"]) == 0
    after = json.loads((out / "config.json").read_text())
    assert after["weights"]["detector"] == before["weights"]["detector"]
    assert after["weights"]["identifier"]["sha256"] != before["weights"]["identifier"]["sha256"]
    assert after["command"] == before["command"] and "--only identifier" in after["identifier_training"]["command"]
    assert main(["train", "implants", "--coco", str(coco_path), "--out", str(out), *small, "--only", "detector"]) == 0
    again = json.loads((out / "config.json").read_text())
    assert again["weights"]["identifier"] == after["weights"]["identifier"]
    assert again["weights"]["detector"]["sha256"] != after["weights"]["detector"]["sha256"]
    assert len(again["fine_tune_continued"]) == 1 and again["fine_tune_continued"][0]["epochs"] == 1
    assert again["thresholds"]["chosen_on"] == "val"
    again["thresholds"] = None  # as in a bundle from before the thresholds were stored
    (out / "config.json").write_text(json.dumps(again))
    capsys.readouterr()
    assert main(["train", "implants", "--coco", str(coco_path), "--out", str(out), *small, "--only", "thresholds"]) == 0
    tuned = json.loads((out / "config.json").read_text())
    assert tuned["weights"] == again["weights"] and tuned["thresholds"]["chosen_on"] == "val"
    assert "calibration" not in capsys.readouterr().err  # --only thresholds leaves the temperature alone
    assert main(["train", "implants", "--coco", str(coco_path), "--out", str(out), *small,
                 "--only", "calibration"]) == 0
    calibrated = json.loads((out / "config.json").read_text())
    assert calibrated["weights"]["detector"] == tuned["weights"]["detector"]
    assert calibrated["thresholds"] == tuned["thresholds"]
    report = calibrated["calibration"]
    assert report["split"] == "val" and report["fitted_on"] in {"detected boxes", "true boxes"}
    assert calibrated["temperature"] == pytest.approx(report["temperature"], rel=1e-5)
    _, identifier, _ = load_bundle(out, "cpu")
    assert float(identifier.temperature) == pytest.approx(calibrated["temperature"])


def stages_all(err: str) -> list[str]:
    """The distinct ``stage`` of the JSON log lines of a training run, in order."""
    stages: list[str] = []
    for line in err.splitlines():
        if line.startswith("{") and (stage := json.loads(line)["stage"]) not in stages:
            stages.append(stage)
    return stages
