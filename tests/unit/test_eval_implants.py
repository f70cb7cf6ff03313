"""``eval implants`` / ``eval implants-ablation``: metrics, tables, figures and bad arguments."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tests import builders
from tests.dicomcheck import require_module

torch = require_module("torch")
require_module("safetensors")

from dicom_service.cli import main  # noqa: E402
from dicom_service.training.ablation_implants import VARIANTS, markdown_tables  # noqa: E402
from dicom_service.training.coco import load_coco  # noqa: E402
from dicom_service.training.evaluate_implants import evaluate_runtime  # noqa: E402
from dicom_service.training.train_options import VIT_NAMES, TrainOptions  # noqa: E402
from dicom_service.vision.implant_runtime import detect_in_windows  # noqa: E402
from dicom_service.vision.vit import VIT_SIZES  # noqa: E402

SMALL = ["--vit", "test", "--img-size", "64", "--pretrain-epochs", "1", "--epochs", "1", "--identifier-epochs", "1",
         "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 periapical + 1 panoramic phantoms, every image with an implant in test or val."""
    return builders.implant_coco_with_splits(tmp_path_factory.mktemp("eval"), periapical=6, panoramic=1, seed=11,
                                             held_out=("val", "test"))


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    assert main(["train", "implants", "--coco", str(data), "--out", str(out), *SMALL]) == 0
    return out


def test_vit_names_match_sizes() -> None:
    assert set(VIT_NAMES) == set(VIT_SIZES)
    with pytest.raises(ValueError, match="--vit"):
        TrainOptions(vit="huge").validate()
    with pytest.raises(ValueError, match="--lr"):
        TrainOptions(lr=0.0).validate()


def test_eval_prints_table_and_writes_json_and_figures(data: Path, bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "implants", "--coco", str(data), "--model", str(bundle), "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "implant AP50" in printed and "system top-1 (true boxes)" in printed
    report = json.loads((out / "eval_implants.json").read_text())
    assert report["split"] == "test" and report["images"] == 1
    for key in ("ap", "ap50", "ap75"):
        assert 0.0 <= report["implants"][key] <= 1.0 and 0.0 <= report["parts"][key] <= 1.0
    assert set(report["parts"]["per_class"]) == {"coronal", "middle", "apical"}
    op = report["operating_point"]
    assert op["true_positives"] + op["false_negatives"] == report["systems"]["implants"]
    chosen = json.loads((bundle / "config.json").read_text())["thresholds"]
    assert op["precision"] is None or 0.0 <= op["precision"] <= 1.0  # None: nothing reported
    assert 0.0 <= op["recall"] <= 1.0 and op["false_positives_per_image"] >= 0.0
    assert (op["part_threshold"], op["group_nms_iou"]) == (chosen["part_threshold"], chosen["group_nms_iou"])
    systems = report["systems"]
    assert systems["implants"] >= 1 and 0.0 <= systems["top1"] <= systems["top3"] <= 1.0
    truth = systems["on_true_boxes"]
    assert 0.0 <= truth["top1"] <= truth["top3"] <= 1.0
    # with perfect boxes the identifier sees every implant: top-3 of 8 systems by chance is not 0 for all seeds,
    # but the figures must at least be written whenever something was matched
    if systems["matched"]:
        assert (out / "system_confusion.png").stat().st_size > 0 and (out / "reliability.png").stat().st_size > 0


def test_eval_bad_arguments(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "implants", "--coco", str(data), "--model", str(tmp_path), "--device", "cpu"]) == 2
    assert "no trained bundle" in capsys.readouterr().err
    assert main(["eval", "implants", "--coco", str(tmp_path / "missing.json"), "--device", "cpu"]) == 2
    assert main(["eval", "implants-ablation", "--coco", str(data), "--variants", "mde,bogus", *SMALL]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["eval", "implants", "--coco", str(data), "--split", "nowhere", "--model", "x", "--device", "cpu"]) == 2


def test_ablation_runs_each_variant_on_the_same_split(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ablation"
    assert main(["eval", "implants-ablation", "--coco", str(data), "--out", str(out),
                 "--variants", "random,mde,mde-one-stage", *SMALL]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["random", "mde", "mde-one-stage"]
    assert all(r["ms_per_image"] > 0 for r in result["rows"])
    assert result["rows"][2]["system_top1"] is None and result["rows"][2]["stages"] == 1
    table = (out / "ablation.md").read_text()
    assert "| random |" in table and "| MDE |" in table and "one-stage" in table
    assert table in capsys.readouterr().out


def test_markdown_tables_cover_all_variants() -> None:
    rows = [{"variant": v.name, "init": v.init, "mask_ratio": v.mask_ratio, "stages": v.stages, "implant_ap": 0.5,
             "implant_ap50": 0.9, "implant_ap75": 0.4, "part_ap50": 0.8, "system_top1": 0.7, "ms_per_image": 100.0,
             "train_seconds": 1.0} for v in VARIANTS]
    table = markdown_tables({"rows": rows})
    assert table.count("| 0.900 |") == 8  # random, MAE, MDE; one- and two-stage; 25/45/65 %
    assert "| 65% |" in table and "| 10.0 |" in table  # FPS from ms per image


def test_detect_in_windows_maps_tiles_back_to_the_source() -> None:
    class BoxAtCentre(torch.nn.Module):
        """A stand-in detector with a known answer: one box in the middle of every window."""

        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            return [{"boxes": torch.tensor([[24.0, 24.0, 40.0, 40.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([1])} for _ in images]

    boxes, scores, labels = detect_in_windows(BoxAtCentre(), np.zeros((100, 300)), 64, threshold=0.5,
                                              device=torch.device("cpu"))
    assert len(boxes) == 4 and (labels == 1).all() and np.allclose(scores, 0.9)  # 100 px tiles at 0, 75, 150, 200
    assert np.allclose(boxes[:, 1], 100 * 24 / 64) and np.allclose(boxes[:, 3], 100 * 40 / 64)
    assert sorted(boxes[:, 0].round(2).tolist()) == sorted(round(x + 100 * 24 / 64, 2) for x in (0, 75, 150, 200))
    none = detect_in_windows(BoxAtCentre(), np.zeros((64, 64)), 64, threshold=0.95, device=torch.device("cpu"))
    assert none[0].shape == (0, 4) and none[1].shape == (0,)


def test_ablation_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"implant_ap": 0.5, "implant_ap50": 0.9, "implant_ap75": 0.4, "part_ap50": 0.8, "system_top1": 0.7,
           "ms_per_image": 100.0, "train_seconds": 1.0, "stages": 2, "init": "mde", "mask_ratio": 0.25}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"options": {"seed": 0}, "rows": [{**row, "variant": "mde"}]}))
    b.write_text(json.dumps({"options": {"seed": 0}, "rows": [{**row, "variant": "random", "init": "random"}]}))
    out = tmp_path / "merged"
    assert main(["eval", "implants-ablation", "--coco", str(tmp_path / "x.json"), "--merge", str(a), str(b),
                 "--out", str(out)]) == 2  # the data set must exist even for a merge
    capsys.readouterr()
    (tmp_path / "x.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert main(["eval", "implants-ablation", "--coco", str(tmp_path / "x.json"), "--merge", str(a), str(b),
                 "--out", str(out)]) == 0
    merged = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in merged["rows"]] == ["random", "mde"]  # VARIANTS order
    assert main(["eval", "implants-ablation", "--coco", str(tmp_path / "x.json"), "--merge", str(a), str(a)]) == 2
    b.write_text(json.dumps({"options": {"seed": 1}, "rows": []}))
    assert main(["eval", "implants-ablation", "--coco", str(tmp_path / "x.json"), "--merge", str(a), str(b)]) == 2


def test_thresholds_are_chosen_on_validation_and_beat_the_fallbacks(data: Path, bundle: Path) -> None:
    from dicom_service.training.tune_implant_thresholds import (
        FINDING_GRID,
        NMS_GRID,
        PART_GRID,
        PART_NMS_GRID,
        tune_operating_point,
    )
    from dicom_service.vision.implant_runtime import LearnedImplantRuntime, OperatingPoint

    stored = json.loads((bundle / "config.json").read_text())["thresholds"]
    assert stored["chosen_on"] == "val" and stored["images"] == 1 and stored["implants"] >= 1
    assert stored["part_threshold"] in PART_GRID and stored["group_nms_iou"] in NMS_GRID
    assert stored["finding_threshold"] in FINDING_GRID
    runtime = LearnedImplantRuntime(bundle, "cpu")
    assert runtime.operating_point == OperatingPoint(stored["part_threshold"], stored["finding_threshold"],
                                                     stored["group_nms_iou"], stored["part_nms_iou"])
    assert stored["part_nms_iou"] in PART_NMS_GRID
    coco = load_coco(data)
    fallback = evaluate_runtime(LearnedImplantRuntime(bundle, "cpu", **asdict(OperatingPoint())), coco, split="val")
    assert stored["ap50"] >= fallback["implants"]["ap50"] - 1e-9  # the fallback point is in the grid
    tuned = evaluate_runtime(runtime, coco, split="val")
    assert tuned["implants"]["ap50"] == pytest.approx(stored["ap50"], abs=1e-6)
    with pytest.raises(ValueError, match="test split"):
        tune_operating_point(runtime, coco, split="test")
    with pytest.raises(ValueError, match="no implant"):
        tune_operating_point(runtime, coco, split="nowhere")


def test_operating_point_from_config_and_overrides(bundle: Path) -> None:
    from dicom_service.vision.implant_runtime import GROUP_NMS_IOU, LearnedImplantRuntime, OperatingPoint

    assert OperatingPoint.from_config({}) == OperatingPoint()
    point = OperatingPoint.from_config({"thresholds": {"part_threshold": 0.2, "chosen_on": "val"}})
    assert point.part_threshold == 0.2 and point.group_nms_iou == GROUP_NMS_IOU
    runtime = LearnedImplantRuntime(bundle, "cpu", finding_threshold=0.75)
    assert runtime.finding_threshold == 0.75
    assert runtime.part_threshold == runtime.config["thresholds"]["part_threshold"]


def _implant_free_coco(folder: Path, *, images: int, seed: int) -> Path:
    """A COCO file of ``images`` periapical phantoms without any implant, all in ``test``
    (a clinic's implant-free radiographs, to measure false positives)."""
    from dicom_service.training.coco import scene_seed, write_coco
    from dicom_service.training.radiograph_phantoms import render_periapical

    scenes = (render_periapical(scene_seed(seed, "periapical", i), implants=0) for i in range(images))
    path = write_coco(scenes, folder, total=images)
    doc = json.loads(path.read_text())
    assert doc["images"] and not doc["annotations"]
    for image in doc["images"]:
        image["split"] = "test"
    path.write_text(json.dumps(doc))
    return path


def test_eval_on_a_split_without_implants_reports_false_positives(bundle: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    clean = _implant_free_coco(tmp_path / "clean", images=2, seed=5)
    out = tmp_path / "eval"
    assert main(["eval", "implants", "--coco", str(clean), "--model", str(bundle), "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    *table, last_line = printed.strip().splitlines()
    text, last = "\n".join(table), json.loads(last_line)
    assert "no annotated implant" in text and "n/a" in text
    assert "false positives per image" in text and "images with a finding" in text
    report = json.loads((out / "eval_implants.json").read_text())
    assert report["images"] == 2 and "systems" not in report
    assert report["implants"] == {"ap": None, "ap50": None, "ap75": None}  # undefined, not a fake 0 or 1
    assert report["parts"]["ap"] is None and report["parts"]["per_class"] == {}
    op = report["operating_point"]
    assert op["recall"] is None and op["true_positives"] == op["false_negatives"] == 0
    assert op["images_without_implants"] == 2 and op["of_which_with_findings"] == op["images_with_findings"]
    assert 0 <= op["images_with_findings"] <= 2
    assert op["false_positives_per_image"] == pytest.approx(op["false_positives"] / 2)
    # precision is 0 when something was reported (every finding is false), undefined when nothing was
    assert op["precision"] == (0.0 if op["false_positives"] else None)
    assert last["operating_point"] == op and last["implants"]["ap50"] is None


def test_operating_summary_counts_false_positives_on_negative_images() -> None:
    from dicom_service.training.evaluate_implants import operating_counts, operating_summary

    totals: dict[str, int] = {}
    for found in ([[0, 0, 10, 10], [20, 20, 30, 30]], [], [[5, 5, 9, 9]], []):  # 4 implant-free images
        for key, value in operating_counts(np.zeros((0, 4)), found).items():
            totals[key] = totals.get(key, 0) + value
    summary = operating_summary(totals, 4)
    assert summary["false_positives"] == 3 and summary["false_positives_per_image"] == 0.75
    assert summary["images_with_findings"] == summary["of_which_with_findings"] == 2
    assert summary["precision"] == 0.0 and summary["recall"] is None
    nothing = operating_summary({"true_positives": 0, "false_positives": 0, "false_negatives": 2}, 1)
    assert nothing["precision"] is None and nothing["recall"] == 0.0
    with pytest.raises(ValueError):
        operating_summary(totals, 0)
