"""COCO export/import of the phantom data set, validation and the scene split."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_service.training.coco import generate_dataset, load_coco, mask_polygons, scene_seed, split_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    calls: list[tuple[int, int, str]] = []
    path = generate_dataset(tmp_path_factory.mktemp("coco"), periapical=5, panoramic=0, seed=11,
                            progress=lambda done, total, sid: calls.append((done, total, sid)))
    assert [c[:2] for c in calls] == [(i, 5) for i in range(1, 6)]
    return path


def test_round_trip_keeps_boxes_attributes_and_links(dataset: Path) -> None:
    raw = json.loads(dataset.read_text())
    data = load_coco(dataset)
    assert {c["name"] for c in raw["categories"]} == {"implant", "coronal", "middle", "apical"}
    assert len(data.annotations) == len(raw["annotations"]) > 0
    for ann, src in zip(data.annotations, raw["annotations"], strict=True):
        x, y, w, h = src["bbox"]
        assert ann.box == (x, y, x + w, y + h)
        assert ann.attributes == src["attributes"] and ann.system == src["system"]
        assert ann.area > 0 and ann.segmentation and len(ann.segmentation[0]) >= 6
    for image in data.images.values():
        pixels = cv2.imread(str(image.path), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint16 and pixels.shape == (image.height, image.width)
        anns = data.for_image(image.id)
        implants = {a.implant_id: a for a in anns if a.category == "implant"}
        for part in (a for a in anns if a.category != "implant"):
            parent = implants[part.implant_id]
            assert part.system == parent.system
            assert parent.box[0] <= part.box[0] and part.box[2] <= parent.box[2]
            assert parent.box[1] <= part.box[1] and part.box[3] <= parent.box[3]


def test_generation_is_deterministic(dataset: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path, periapical=5, panoramic=0, seed=11)
    assert again.read_text() == dataset.read_text()
    first = json.loads(dataset.read_text())["images"][0]["file_name"]
    a = cv2.imread(str(dataset.parent / first), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(again.parent / first), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(a, b)


def test_split_is_deterministic_scene_disjoint_and_balanced() -> None:
    ids = [f"periapical-{scene_seed(3, 'periapical', i)}" for i in range(2000)]
    splits = [split_for(s) for s in ids]
    assert splits == [split_for(s) for s in ids]
    fractions = {name: splits.count(name) / len(ids) for name in ("train", "val", "test")}
    assert 0.76 < fractions["train"] < 0.84 and 0.07 < fractions["val"] < 0.13 and 0.07 < fractions["test"] < 0.13


def test_images_carry_scene_and_split(dataset: Path) -> None:
    data = load_coco(dataset)
    by_scene: dict[str, set[str]] = {}
    for image in data.images.values():
        assert image.scene_id and image.split in ("train", "val", "test")
        by_scene.setdefault(image.scene_id, set()).add(image.split)
    assert all(len(s) == 1 for s in by_scene.values())


def _broken(tmp_path: Path, dataset: Path, mutate) -> Path:
    doc = json.loads(dataset.read_text())
    for image in doc["images"]:  # the copy lies elsewhere: its images by absolute path
        image["file_name"] = str(dataset.parent / image["file_name"])
    mutate(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("categories"), "categories"),
    (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\].*bbox"),
    (lambda d: d["annotations"][0].update(category_id=99), "unknown category_id 99"),
    (lambda d: d["annotations"][0].update(image_id=999), "unknown image_id"),
    (lambda d: d["annotations"][0].update(bbox=[400.0, 10.0, 40.0, 10.0]), "outside image"),
    (lambda d: d["annotations"][0].update(bbox=[1.0, 1.0, -3.0, 2.0]), "negative"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\].*width"),
    (lambda d: d["categories"][1].update(name="crown"), r"annotations\[1\]: category 'crown' \(id 2\) is not one"),
    (lambda d: d["images"][0].update(split="holdout"), r"images\[0\]: unknown split 'holdout'"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [416, 416], "counts": "abc"}),
     r"annotations\[0\]: RLE segmentations are not supported"),
    (lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0]]), r"annotations\[0\]: segmentation\[0\]"),
    (lambda d: d["images"][1].update(file_name="gone.png"), r"images\[1\] \(gone.png\): .*gone.png does not exist"),
    (lambda d: d["images"][0].update(width=500), r"images\[0\] .*file is 416 x 416 pixels but the entry says 500 x"),
])
def test_broken_files_are_rejected(tmp_path: Path, dataset: Path, mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_coco(_broken(tmp_path, dataset, mutate))


def test_a_file_that_is_no_image_is_named(tmp_path: Path, dataset: Path) -> None:
    note = tmp_path / "note.png"
    note.write_text("not pixels")
    with pytest.raises(ValueError, match=r"images\[2\] \(.*note.png\): .*not an image format OpenCV reads"):
        load_coco(_broken(tmp_path, dataset, lambda d: d["images"][2].update(file_name=str(note))))


def test_split_and_category_names_in_any_case(tmp_path: Path, dataset: Path) -> None:
    def rename(doc: dict) -> None:
        for image, split in zip(doc["images"], ("Train", " VAL", "validation", "Test", "train"), strict=True):
            image["split"] = split
        for category in doc["categories"]:
            category["name"] = category["name"].capitalize()

    data = load_coco(_broken(tmp_path, dataset, rename))
    assert [im.split for im in data.images.values()] == ["train", "val", "val", "test", "train"]
    assert {a.category for a in data.annotations} == {"implant", "coronal", "middle", "apical"}


def test_plain_user_coco_without_extra_fields(tmp_path: Path) -> None:
    doc = {"images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 50}],
           "categories": [{"id": 1, "name": "implant"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 40]}]}
    path = tmp_path / "user.json"
    path.write_text(json.dumps(doc))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((50, 100), np.uint8))
    data = load_coco(path)
    ann = data.annotations[0]
    assert ann.box == (10.0, 5.0, 30.0, 45.0) and ann.attributes is None and ann.system is None
    assert ann.implant_id is None and data.images[7].split == split_for("a.png")


def test_user_coco_without_split_is_split_by_patient(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10, "patient_id": f"p{i // 3}"}
              for i in range(300)]
    path = tmp_path / "user.json"
    path.write_text(json.dumps({"images": images, "categories": [], "annotations": []}))
    data = load_coco(path, check_files=False)  # the split only: no image files
    by_patient: dict[str, set[str | None]] = {}
    for image in images:
        by_patient.setdefault(image["patient_id"], set()).add(data.images[image["id"]].split)
    assert all(len(splits) == 1 for splits in by_patient.values())  # no patient in two splits
    assert {s for splits in by_patient.values() for s in splits} == {"train", "val", "test"}


def test_mask_polygons_follow_the_mask() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:25] = True
    polys = mask_polygons(mask, (100.0, 200.0))
    pts = np.array(polys[0]).reshape(-1, 2)
    assert pts[:, 0].min() == 110 and pts[:, 0].max() == 124 and pts[:, 1].min() == 205 and pts[:, 1].max() == 214
