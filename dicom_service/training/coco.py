"""COCO export and import of implant data sets (synthetic phantoms or user data).

Written files: ``annotations.json`` and 16-bit grey PNG images (12 bits used) under
``images/``. Categories: ``implant`` (1), ``coronal`` (2), ``middle`` (3), ``apical`` (4).
Annotations carry ``bbox`` ``[x, y, w, h]`` (COCO: x = column of the left edge, y = row
of the top edge, pixels), ``segmentation`` as **polygons** (outer contours of the mask
found with OpenCV, ``[x0, y0, x1, y1, ...]`` at pixel centres), ``area`` (mask pixel
count), ``iscrowd`` 0 and the extra fields ``attributes`` (design values), ``system``,
``implant_id`` (links the parts to their implant within the image) and ``truncated``.
Images carry ``scene_id``, ``split`` (train / val / test, fixed by hashing the scene id:
80 / 10 / 10) and ``pixel_spacing_mm``. Inside this package boxes are
``(x0, y0, x1, y1)`` with exclusive ends.

:func:`load_coco` reads ours and users' files and refuses, naming the entry, what
training would otherwise find only hours later: unknown category names (matched without
regard to case), unknown ``split`` values (``Train`` is ``train``; ``validation`` is
``val``), RLE segmentations, and image files that are missing or whose size differs
from the entry's ``width`` x ``height`` (read from the file header).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from dicom_service.training.radiograph_phantoms import render_panoramic, render_periapical
from dicom_service.training.radiograph_scene import RadiographScene

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "implant", "supercategory": "implant"},
    {"id": 2, "name": "coronal", "supercategory": "implant_part"},
    {"id": 3, "name": "middle", "supercategory": "implant_part"},
    {"id": 4, "name": "apical", "supercategory": "implant_part"},
)
SPLITS: tuple[str, str, str] = ("train", "val", "test")
#: Category names :func:`load_coco` accepts (compared in lower case).
CATEGORY_NAMES: tuple[str, ...] = tuple(c["name"] for c in CATEGORIES)
_SPLIT_ALIASES = {"validation": "val"}
_BOX_TOLERANCE = 1e-3

ProgressCallback = Callable[[int, int, str], None]


def split_for(scene_id: str, fractions: tuple[float, float] = (0.8, 0.9)) -> str:
    """Deterministic split of a scene: ``sha256(scene_id)`` mapped to ``[0, 1)``, cut at ``fractions``."""
    value = int.from_bytes(hashlib.sha256(scene_id.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return SPLITS[0] if value < fractions[0] else SPLITS[1] if value < fractions[1] else SPLITS[2]


def mask_polygons(mask: np.ndarray, offset_xy: tuple[float, float]) -> list[list[float]]:
    """Outer contours of a bool ``(h, w)`` mask as COCO polygons in image pixels (x, y pairs)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64) + np.asarray(offset_xy, np.float64)
        if len(pts) < 3:  # degenerate (1-2 px wide): use the pixel's corners instead
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0) + 1.0
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        polys.append([round(float(v), 2) for v in pts.reshape(-1)])
    return polys


def scene_annotations(scene: RadiographScene, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotation dicts for one scene: per implant one ``implant`` plus its parts."""
    names = {c["name"]: c["id"] for c in CATEGORIES}
    out: list[dict[str, Any]] = []
    for imp in scene.implants:
        items = [("implant", imp.box, imp.mask)] + [(p.name, p.box, p.mask) for p in imp.parts]
        for name, box, mask in items:
            x0, y0, x1, y1 = box
            out.append({
                "id": first_id + len(out), "image_id": image_id, "category_id": names[name],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "iscrowd": 0,
                "segmentation": mask_polygons(mask, (x0, y0)),
                "attributes": imp.attributes, "system": imp.system, "implant_id": imp.implant_id,
                "truncated": imp.truncated,
            })
    return out


def write_coco(scenes: Iterable[RadiographScene], out_dir: str | Path,
               progress: ProgressCallback | None = None, total: int = 0) -> Path:
    """Write ``scenes`` as PNG images and ``annotations.json`` under ``out_dir``; return the JSON path."""
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, scene in enumerate(scenes):
        name = f"images/{scene.scene_id}.png"
        if not cv2.imwrite(str(root / name), scene.image):
            raise OSError(f"cannot write {root / name}")
        rows, cols = scene.image.shape
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": cols, "height": rows,
                       "scene_id": scene.scene_id, "split": split_for(scene.scene_id), "kind": scene.kind,
                       "pixel_spacing_mm": scene.pixel_mm, "bits_stored": 12})
        annotations.extend(scene_annotations(scene, image_id, len(annotations) + 1))
        if progress is not None:
            progress(index + 1, total, scene.scene_id)
    doc = {"info": {"description": "Synthetic dental radiograph phantoms (dicom_service); no patient data",
                    "version": "1"},
           "images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
    path = root / "annotations.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def scene_seed(seed: int, kind: str, index: int) -> int:
    """Seed of scene ``index`` of ``kind`` in a data set of ``seed`` (63-bit, from sha256)."""
    digest = hashlib.sha256(f"{seed}:{kind}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generate_dataset(out_dir: str | Path, *, periapical: int, panoramic: int, seed: int,
                     progress: ProgressCallback | None = None) -> Path:
    """Render ``periapical`` 416 x 416 and ``panoramic`` 1000 x 2000 scenes and write them as COCO.

    ``progress(done, total, scene_id)`` is called after each scene. Returns the path of
    ``annotations.json``. The same arguments always give the same files.
    """
    if periapical < 0 or panoramic < 0:
        raise ValueError(f"scene counts must be >= 0, got periapical={periapical}, panoramic={panoramic}")

    def scenes() -> Iterable[RadiographScene]:
        for i in range(periapical):
            yield render_periapical(scene_seed(seed, "periapical", i))
        for i in range(panoramic):
            yield render_panoramic(scene_seed(seed, "panoramic", i))

    return write_coco(scenes(), out_dir, progress, periapical + panoramic)


@dataclass
class CocoAnnotation:
    """One annotation as read; ``box`` is ``(x0, y0, x1, y1)``; extra fields None when absent."""

    id: int
    image_id: int
    category: str
    box: tuple[float, float, float, float]
    area: float
    iscrowd: int
    segmentation: Any
    attributes: dict[str, str] | None
    system: str | None
    implant_id: int | None
    truncated: bool | None


@dataclass
class CocoImage:
    """One image entry; ``scene_id`` is None for files without it.

    ``split`` is the file's ``split``; when absent it is derived with :func:`split_for`
    from the image's ``patient_id``, else its ``scene_id``, else its ``file_name``, so
    that a user's data set is split deterministically (by patient when it says who
    the patient is, as seed 002 does).
    """

    id: int
    file_name: str
    width: int
    height: int
    scene_id: str | None
    split: str | None
    path: Path


@dataclass
class CocoDataset:
    """A validated COCO file: images by id, category names by id, annotations in file order."""

    images: dict[int, CocoImage]
    categories: dict[int, str]
    annotations: list[CocoAnnotation] = field(default_factory=list)

    def for_image(self, image_id: int) -> list[CocoAnnotation]:
        """Annotations of one image, in file order."""
        return [a for a in self.annotations if a.image_id == image_id]

    def split(self, name: str) -> list[CocoImage]:
        """Images of split ``name`` (images without a split are in none)."""
        return [im for im in self.images.values() if im.split == name]


def _require(entry: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be an object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    return entry


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    return float(value)


def _split_of(image: dict[str, Any], where: str) -> str:
    """The image's split in lower case (``validation`` → ``val``), or derived; ``ValueError`` if unknown."""
    if image.get("split") is None:
        key = image.get("patient_id") or image.get("scene_id") or image["file_name"]
        return split_for(str(key))
    name = str(image["split"]).strip().lower()
    name = _SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise ValueError(f"{where}: unknown split {image['split']!r}; use train, val or test")
    return name


def _category_name(name: Any, category_id: int, where: str) -> str:
    """``name`` in lower case when it is one of :data:`CATEGORY_NAMES`; ``ValueError`` naming it otherwise."""
    known = str(name).strip().lower()
    if known not in CATEGORY_NAMES:
        raise ValueError(f"{where}: category {name!r} (id {category_id}) is not one of "
                         f"{', '.join(CATEGORY_NAMES)}; remove its annotations or rename it")
    return known


def _check_segmentation(segmentation: Any, where: str) -> None:
    """Accept None, ``[]`` or a list of polygons ``[x0, y0, x1, y1, ...]`` (3 points or more)."""
    if segmentation is None:
        return
    if isinstance(segmentation, dict):
        raise ValueError(f"{where}: RLE segmentations are not supported; convert them to polygons "
                         "or leave the segmentation out (the box is then the mask)")
    if not isinstance(segmentation, list):
        raise ValueError(f"{where}: segmentation must be a list of polygons, got {type(segmentation).__name__}")
    for k, poly in enumerate(segmentation):
        if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in poly)):
            raise ValueError(f"{where}: segmentation[{k}] must be a polygon [x0, y0, x1, y1, ...] of "
                             "at least 3 points")


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header when Pillow knows the format.

    Raises
    ------
    FileNotFoundError
        The file does not exist (or is not a file).
    ValueError
        OpenCV has no reader for it, or neither Pillow nor OpenCV can read its size.
    """
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if not cv2.haveImageReader(str(path)):  # by the file's signature, as training reads it
        raise ValueError(f"{path}: not an image format OpenCV reads")
    try:
        with Image.open(path) as image:
            return int(image.width), int(image.height)
    except (UnidentifiedImageError, OSError):
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # a format Pillow lacks: decode it
    if pixels is None:
        raise ValueError(f"{path}: cannot be read as an image")
    return int(pixels.shape[1]), int(pixels.shape[0])


def check_image_files(images: Iterable[CocoImage], where: dict[int, str]) -> None:
    """Check that every image file exists and has the size of its entry.

    ``where[image.id]`` names the entry in messages (``images[3] (a.png)``).

    Raises
    ------
    ValueError
        A file is missing, unreadable or of another size than the entry's
        ``width`` x ``height``.
    """
    for image in images:
        try:
            width, height = image_size(image.path)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{where[image.id]}: {exc}") from exc
        if (width, height) != (image.width, image.height):
            raise ValueError(f"{where[image.id]}: the file is {width} x {height} pixels but the entry says "
                             f"{image.width} x {image.height}")


def load_coco(path: str | Path, *, check_files: bool = True) -> CocoDataset:
    """Read and validate a COCO detection file (ours or a user's).

    Annotations' category names are in lower case and images' ``split`` one of :data:`SPLITS`.

    Parameters
    ----------
    path : path
        The JSON file; image ``file_name`` s are relative to its folder.
    check_files : bool
        Also check that every image file exists and has the entry's size (header only).

    Raises
    ------
    ValueError
        Missing top-level or per-entry keys, duplicate ids, unknown image or category
        ids, an annotation whose category is not ``implant``, ``coronal``, ``middle`` or
        ``apical`` (any case), an unknown ``split``, an RLE or malformed segmentation, a
        ``bbox`` that is negative in size or lies outside its image, or (with
        ``check_files``) a missing image file or one of another size; the message names
        the entry.
    """
    source = Path(path)
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from exc
    doc = _require(doc, ("images", "annotations", "categories"), str(source))
    categories: dict[int, str] = {}
    for i, c in enumerate(doc["categories"]):
        c = _require(c, ("id", "name"), f"categories[{i}]")
        categories[int(_number(c["id"], f"categories[{i}].id"))] = str(c["name"])
    images: dict[int, CocoImage] = {}
    entries: dict[int, str] = {}
    for i, im in enumerate(doc["images"]):
        where = f"images[{i}]"
        im = _require(im, ("id", "file_name", "width", "height"), where)
        image_id = int(_number(im["id"], f"{where}.id"))
        if image_id in images:
            raise ValueError(f"{where}: duplicate image id {image_id}")
        width, height = int(_number(im["width"], f"{where}.width")), int(_number(im["height"], f"{where}.height"))
        if width <= 0 or height <= 0:
            raise ValueError(f"{where}: width and height must be positive, got {width} x {height}")
        images[image_id] = CocoImage(id=image_id, file_name=str(im["file_name"]), width=width, height=height,
                                     scene_id=im.get("scene_id"), split=_split_of(im, where),
                                     path=source.parent / str(im["file_name"]))
        entries[image_id] = f"{where} ({im['file_name']})"
    annotations: list[CocoAnnotation] = []
    seen: set[int] = set()
    for i, a in enumerate(doc["annotations"]):
        where = f"annotations[{i}]"
        a = _require(a, ("id", "image_id", "category_id", "bbox"), where)
        ann_id = int(_number(a["id"], f"{where}.id"))
        if ann_id in seen:
            raise ValueError(f"{where}: duplicate annotation id {ann_id}")
        seen.add(ann_id)
        image = images.get(int(_number(a["image_id"], f"{where}.image_id")))
        if image is None:
            raise ValueError(f"{where}: unknown image_id {a['image_id']!r}")
        cat = int(_number(a["category_id"], f"{where}.category_id"))
        if cat not in categories:
            raise ValueError(f"{where}: unknown category_id {cat}")
        category = _category_name(categories[cat], cat, where)
        bbox = a["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = (_number(v, f"{where}.bbox") for v in bbox)
        if w < 0 or h < 0:
            raise ValueError(f"{where}: bbox has negative size {bbox}")
        tol = _BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol:
            raise ValueError(f"{where}: bbox {bbox} lies outside image {image.id} "
                             f"({image.width} x {image.height})")
        attributes = a.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            raise ValueError(f"{where}: attributes must be an object")
        _check_segmentation(a.get("segmentation"), where)
        annotations.append(CocoAnnotation(
            id=ann_id, image_id=image.id, category=category, box=(x, y, x + w, y + h),
            area=float(a.get("area", w * h)), iscrowd=int(a.get("iscrowd", 0)), segmentation=a.get("segmentation"),
            attributes={str(k): str(v) for k, v in attributes.items()} if attributes is not None else None,
            system=None if a.get("system") is None else str(a["system"]), implant_id=a.get("implant_id"),
            truncated=a.get("truncated")))
    if check_files:
        check_image_files(images.values(), entries)
    return CocoDataset(images=images, categories=categories, annotations=annotations)

