"""Torch data sets for seed 002's two stages, read from a COCO implant data set.

* :class:`PartDetectionDataset`: model-input windows of radiographs with the design-part boxes,
  labels and masks that torchvision's Mask R-CNN expects (stage 1).
* :class:`ImplantCropDataset`: upright implant crops with system and attribute labels
  (stage-2 identification).
* :class:`UnlabelledImages`: the same windows without labels (MDE / MAE pre-training).

Conventions: images are ``(rows, cols)`` arrays; points and boxes are ``(x, y)`` =
(column, row) in continuous pixel coordinates, boxes ``(x0, y0, x1, y1)`` with exclusive
ends. Images are cut into the same windows as at inference time
(:func:`dicom_service.vision.tiling.plan_windows`): a near-square image is one
letterboxed window (long side scaled to ``S``, padded bottom/right with zeros); a
panoramic image gives several overlapping square tiles of its short side, each an item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dicom_service.training.coco import CocoAnnotation, CocoDataset, CocoImage
from dicom_service.vision.implant_identifier import crop_implant
from dicom_service.vision.part_detector import PART_CLASSES
from dicom_service.vision.tiling import Window, plan_windows

#: Largest fraction of pixels set to black or white by the noise augmentation (seed 002).
MAX_NOISE_FRACTION = 0.06
TWELVE_BIT_MAX = 4095
_MIN_BOX_SIDE = 1.0  # boxes thinner than one model pixel after resizing are dropped
MIN_VISIBLE = 0.5  # parts cut by a tile edge are kept when this fraction of their box is inside
BOX_JITTER = 0.10  # crop augmentation: each box side moves by up to this fraction of the box size
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly


def read_radiograph(image: CocoImage) -> np.ndarray:
    """Read an image file as ``(rows, cols)`` float32 in [0, 1].

    16-bit images whose maximum is at most 4095 are taken as 12-bit and divided by
    4095; 8-bit images are divided by 255; other inputs by their maximum. Colour images
    are converted to grey.

    Raises
    ------
    FileNotFoundError
        The file cannot be read.
    ValueError
        The decoded size differs from the COCO entry's ``width`` x ``height``.
    """
    pixels = cv2.imread(str(image.path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise FileNotFoundError(f"cannot read image {image.path}")
    if pixels.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        pixels = cv2.cvtColor(pixels, code)
    if pixels.shape != (image.height, image.width):
        raise ValueError(f"{image.path}: decoded size {pixels.shape[1]} x {pixels.shape[0]} differs from the "
                         f"annotated {image.width} x {image.height}")
    if pixels.dtype == np.uint8:
        scale = 255.0
    elif pixels.dtype == np.uint16 and int(pixels.max()) <= TWELVE_BIT_MAX:
        scale = float(TWELVE_BIT_MAX)
    else:
        scale = max(float(pixels.max()), 1e-12)
    return np.clip(pixels.astype(np.float32) / scale, 0.0, 1.0)


def image_windows(images: Sequence[CocoImage], size: int) -> list[tuple[CocoImage, Window]]:
    """Every ``(image, window)`` pair that inference would run, in image order."""
    return [(im, w) for im in images for w in plan_windows((im.height, im.width), size)]


def rasterise_polygons(segmentation: Any, scale: float, size: int,
                       origin: tuple[float, float] = (0.0, 0.0),
                       box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Fill COCO polygons (vertices at pixel centres, source pixels) in a ``(size, size)`` uint8 mask.

    Source point ``p`` lands at ``(p - origin) * scale`` (``origin`` is the window's
    ``(x0, y0)``); the parts outside the mask are cut off. An annotation without a
    segmentation (``None`` or ``[]``, boxes-only data sets) is filled as its ``box``.
    """
    if segmentation is None:
        segmentation = []
    mask = np.zeros((size, size), dtype=np.uint8)
    if not isinstance(segmentation, list):
        raise ValueError(f"only polygon segmentations are supported, got {type(segmentation).__name__}")
    if not segmentation and box is not None:  # boxes-only annotations: the box is the mask
        segmentation = [[box[0], box[1], box[2] - 1, box[1], box[2] - 1, box[3] - 1, box[0], box[3] - 1]]
    polygons = []
    for poly in segmentation:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        pts = (pts - np.asarray(origin) + 0.5) * scale - 0.5  # pixel centre -> pixel centre
        polygons.append(np.round(pts * (1 << _SHIFT)).astype(np.int32))
    if polygons:
        cv2.fillPoly(mask, polygons, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def _augment(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed 002's augmentation on a square ``(S, S)`` image, ``(N, 4)`` xyxy boxes and ``(N, S, S)`` masks.

    Salt-and-pepper noise on a uniform fraction in [0, 6%] of pixels, horizontal and
    vertical flips (each with probability 1/2) and a rotation by 0, +90 or -90 degrees.
    """
    size = image.shape[0]
    x0, y0, x1, y1 = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).T
    if rng.random() < 0.5:  # horizontal flip: x -> S - x
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        x0, x1 = size - x1, size - x0
    if rng.random() < 0.5:  # vertical flip: y -> S - y
        image, masks = image[::-1], masks[:, ::-1]
        y0, y1 = size - y1, size - y0
    k = int(rng.choice((0, 1, 3)))
    if k == 1:  # counter-clockwise: (x, y) -> (y, S - x)
        x0, y0, x1, y1 = y0, size - x1, y1, size - x0
    elif k == 3:  # clockwise: (x, y) -> (S - y, x)
        x0, y0, x1, y1 = size - y1, x0, size - y0, x1
    image, masks = np.rot90(image, k), np.rot90(masks, k, axes=(1, 2))
    image = np.ascontiguousarray(image)
    fraction = rng.uniform(0.0, MAX_NOISE_FRACTION)
    hit = rng.random(image.shape) < fraction
    image[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)
    return image, np.stack([x0, y0, x1, y1], axis=1).astype(np.float32), np.ascontiguousarray(masks)


def _item_rng() -> np.random.Generator:
    """A numpy generator drawn from torch's (seeded) global generator, so runs repeat."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


def _split_images(coco: CocoDataset, split: str, limit: int | None) -> list[CocoImage]:
    images = sorted(coco.split(split), key=lambda im: im.id)
    return images if limit is None else images[:limit]


class PartDetectionDataset(Dataset):
    """Model-input windows of radiographs with design-part targets for Mask R-CNN.

    Parameters
    ----------
    coco : CocoDataset
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    img_size : int
        Side ``S`` of the square model input.
    augment : bool
        Apply seed 002's augmentation (noise, flips, ±90° rotations).
    limit : int, optional
        Keep only the first ``limit`` images of the split (by image id).
    categories : sequence of str
        Classes to detect, index 0 being background: :data:`PART_CLASSES` (stage 1 of
        the two-stage model) or ``("background", "implant")`` (the one-stage ablation).

    Items are ``(image, target)``: ``image`` ``(1, S, S)`` float32 in [0, 1]; ``target``
    ``{"boxes": (N, 4) float32 (x0, y0, x1, y1) model pixels, "labels": (N,) int64 in
    1..len(categories)-1, "masks": (N, S, S) uint8}``. A near-square image is one item
    (letterboxed); a panoramic image is one item per tile. Objects thinner than one model
    pixel, or with less than half of their box inside the tile, are dropped.
    """

    def __init__(self, coco: CocoDataset, split: str, img_size: int = 416, augment: bool = False,
                 limit: int | None = None, categories: Sequence[str] = PART_CLASSES) -> None:
        if img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {img_size}")
        self.coco, self.size, self.augment = coco, img_size, augment
        self.categories = tuple(categories)
        self.images = _split_images(coco, split, limit)
        self.items = image_windows(self.images, img_size)
        self._objects = {im.id: [a for a in coco.for_image(im.id) if a.category in self.categories[1:]]
                         for im in self.images}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info, window = self.items[index]
        image = window.crop(read_radiograph(info))
        origin = np.array([window.x0, window.y0, window.x0, window.y0], dtype=np.float64)
        boxes, labels, masks = [], [], []
        for ann in self._objects[info.id]:
            raw = (np.asarray(ann.box, dtype=np.float64) - origin) * window.scale
            box = np.clip(raw, 0.0, self.size)
            if box[2] - box[0] < _MIN_BOX_SIDE or box[3] - box[1] < _MIN_BOX_SIDE:
                continue
            area = (raw[2] - raw[0]) * (raw[3] - raw[1])
            if (box[2] - box[0]) * (box[3] - box[1]) < MIN_VISIBLE * area:
                continue
            boxes.append(box)
            labels.append(self.categories.index(ann.category))
            masks.append(rasterise_polygons(ann.segmentation, window.scale, self.size,
                                            (float(window.x0), float(window.y0)), ann.box))
        box_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        mask_arr = np.stack(masks) if masks else np.zeros((0, self.size, self.size), dtype=np.uint8)
        if self.augment:
            image, box_arr, mask_arr = _augment(image, box_arr, mask_arr, _item_rng())
        target = {"boxes": torch.from_numpy(box_arr), "labels": torch.tensor(labels, dtype=torch.int64),
                  "masks": torch.from_numpy(mask_arr)}
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], target


class UnlabelledImages(Dataset):
    """Model-input windows ``(1, S, S)`` float32 in [0, 1] for pre-training (no labels).

    Parameters are as for :class:`PartDetectionDataset` (the same windows: one per
    near-square image, tiles of panoramic ones); augmentation uses the same flips,
    rotations and noise.
    """

    def __init__(self, coco: CocoDataset, split: str, img_size: int = 416, augment: bool = False,
                 limit: int | None = None) -> None:
        self.size, self.augment = img_size, augment
        self.images = _split_images(coco, split, limit)
        self.items = image_windows(self.images, img_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        info, window = self.items[index]
        image = window.crop(read_radiograph(info))
        if self.augment:
            empty = np.zeros((0, 4), dtype=np.float32)
            image, _, _ = _augment(image, empty, np.zeros((0, *image.shape), np.uint8), _item_rng())
        return torch.from_numpy(image)[None]


def label_space(coco: CocoDataset) -> tuple[list[str], dict[str, list[str]]]:
    """Sorted implant systems and attribute values found on the ``implant`` annotations (all splits).

    Returns
    -------
    systems : list of str
    attributes : dict
        Attribute name → sorted list of its values.
    """
    systems: set[str] = set()
    attributes: dict[str, set[str]] = {}
    for ann in coco.annotations:
        if ann.category != "implant":
            continue
        if ann.system is not None:
            systems.add(str(ann.system))
        for key, value in (ann.attributes or {}).items():
            attributes.setdefault(key, set()).add(value)
    return sorted(systems), {k: sorted(v) for k, v in sorted(attributes.items())}


def coronal_on_top(implant: CocoAnnotation, parts: Sequence[CocoAnnotation]) -> bool:
    """False when the implant's coronal part lies below its apical part (apex up, maxilla).

    Uses the parts with the implant's ``implant_id``; True when either is missing.
    """
    centre: dict[str, float] = {}
    for part in parts:
        if part.implant_id == implant.implant_id and part.category in ("coronal", "apical"):
            centre[part.category] = (part.box[1] + part.box[3]) / 2.0
    if len(centre) < 2:
        return True
    return centre["coronal"] <= centre["apical"]


class ImplantCropDataset(Dataset):
    """Upright implant crops with their system and design-attribute labels.

    Parameters
    ----------
    coco : CocoDataset
    split : str
    systems : sequence of str
        System names in the identifier's head order. Implants without a system are skipped.
    attributes : mapping of str to sequence of str
        Attribute name → values in head order; values not listed (or absent) give -1.
    augment : bool
        Box jitter (each side by up to :data:`BOX_JITTER` of the box size, as a detected
        box would differ from the annotated one), horizontal flips and salt-and-pepper
        noise (no rotation: crops stay upright).
    limit : int, optional
        Keep only the implants of the first ``limit`` images of the split.

    Items are ``(crop, system, attributes)``: ``crop`` ``(1, 192, 64)`` float32 in [0, 1]
    (the implant box padded by 10% per side, coronal end at the top), ``system`` int
    index, ``attributes`` ``{name: index or -1}``.

    Raises
    ------
    ValueError
        An implant's system is not in ``systems``.
    """

    def __init__(self, coco: CocoDataset, split: str, systems: Sequence[str],
                 attributes: Mapping[str, Sequence[str]], augment: bool = False, limit: int | None = None) -> None:
        self.systems = tuple(systems)
        self.attributes = {k: tuple(v) for k, v in attributes.items()}
        self.augment = augment
        self.items: list[tuple[CocoImage, CocoAnnotation, bool]] = []
        for image in _split_images(coco, split, limit):
            anns = coco.for_image(image.id)
            for ann in anns:
                if ann.category != "implant" or ann.system is None:
                    continue
                if ann.system not in self.systems:
                    raise ValueError(f"annotation {ann.id}: system {ann.system!r} is not one of the identifier's")
                self.items.append((image, ann, coronal_on_top(ann, anns)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, int]]:
        image, ann, upright = self.items[index]
        box = np.asarray(ann.box, dtype=np.float64)
        rng = _item_rng() if self.augment else None
        if rng is not None:
            w, h = box[2] - box[0], box[3] - box[1]
            box = box + rng.uniform(-BOX_JITTER, BOX_JITTER, 4) * np.array([w, h, w, h])
        crop = crop_implant(read_radiograph(image), tuple(box), coronal_on_top=upright, pad=0.1)
        if rng is not None:
            if rng.random() < 0.5:
                crop = np.ascontiguousarray(crop[:, ::-1])
            hit = rng.random(crop.shape) < rng.uniform(0.0, MAX_NOISE_FRACTION)
            crop[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)
        values = ann.attributes or {}
        labels = {k: (v.index(values[k]) if values.get(k) in v else -1) for k, v in self.attributes.items()}
        tensor = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None]
        return tensor, self.systems.index(ann.system), labels


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                      ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Keep detection items as lists (images and targets), as torchvision's detectors take them."""
    return [item[0] for item in batch], [item[1] for item in batch]
