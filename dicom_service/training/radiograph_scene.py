"""Scene assembly for the synthetic radiographs: material accumulators and annotations.

A :class:`SceneBuilder` holds one scene-sized float32 thickness map (mm) per material,
indexed ``[row, column]``; teeth, implants and superstructures are warped into it by
affine maps (tilt, angulation foreshortening and shear), and every implant placed gets an
:class:`ImplantAnnotation`. Boxes are ``(x0, y0, x1, y1)`` pixels, x = column, y = row,
exclusive ends, clipped to the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from dicom_service.training.implant_design import PART_NAMES, ImplantDesign, render_implant_profile
from dicom_service.training.radiograph_anatomy import ToothMaps, object_matrix, warp_into

Box = tuple[float, float, float, float]


@dataclass
class PartAnnotation:
    """One design part of one implant: ``name`` in :data:`PART_NAMES`.

    ``mask`` is ``(h, w)`` bool cropped to ``box``; its top-left pixel is ``(box[0], box[1])``.
    """

    name: str
    box: Box
    mask: np.ndarray


@dataclass
class ImplantAnnotation:
    """Ground truth of one implant in a scene.

    Attributes
    ----------
    implant_id : int
        Index of the implant in its scene (links parts to their implant).
    box : tuple of float
        ``(x0, y0, x1, y1)`` of the visible silhouette, clipped to the image.
    mask : np.ndarray
        ``(h, w)`` bool silhouette cropped to ``box``.
    parts : list of PartAnnotation
        The visible parts (a part wholly outside the image is left out).
    design : ImplantDesign
    system : str
    truncated : bool
        True when part of the implant lies outside the image.
    axis : tuple of float
        ``(x_coronal, y_coronal, x_apex, y_apex)`` in image pixels (may lie outside).
    """

    implant_id: int
    box: Box
    mask: np.ndarray
    parts: list[PartAnnotation]
    design: ImplantDesign
    system: str
    truncated: bool
    axis: Box

    @property
    def attributes(self) -> dict[str, str]:
        """Design values as strings (see :meth:`ImplantDesign.attributes`)."""
        return self.design.attributes()


@dataclass
class RadiographScene:
    """A rendered scene: ``image`` ``(rows, cols)`` uint16 (12 bits stored) plus truth."""

    image: np.ndarray
    kind: str
    seed: int
    pixel_mm: float
    implants: list[ImplantAnnotation] = field(default_factory=list)

    @property
    def scene_id(self) -> str:
        """Stable identifier of the scene (kind and seed)."""
        return f"{self.kind}-{self.seed}"


def _crop(patch: np.ndarray, x0: int, y0: int) -> tuple[Box, np.ndarray] | None:
    """Tight box ``(x0, y0, x1, y1)`` and cropped bool mask of a warped patch, or None if empty."""
    ys, xs = np.nonzero(patch)
    if ys.size == 0:
        return None
    r0, r1, c0, c1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    box = (float(x0 + c0), float(y0 + r0), float(x0 + c1), float(y0 + r1))
    return box, patch[r0:r1, c0:c1].copy()


def _flip_box(box: Box, rows: int) -> Box:
    return (box[0], rows - box[3], box[2], rows - box[1])


class SceneBuilder:
    """Accumulates material thickness maps and implant annotations for one scene.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the image.
    pixel_mm : float
        Pixel size in mm.
    foreshorten, shear : float
        Scene-wide vertical angulation (cos factor on the object's long axis) and shear.
    """

    def __init__(self, shape: tuple[int, int], pixel_mm: float, foreshorten: float = 1.0, shear: float = 0.0):
        self.shape = shape
        self.pixel_mm = pixel_mm
        self.foreshorten = foreshorten
        self.shear = shear
        self.materials: dict[str, np.ndarray] = {}
        self.roots = np.zeros(shape, np.float32)
        self.implants: list[ImplantAnnotation] = []

    def layer(self, name: str) -> np.ndarray:
        """The scene-sized float32 thickness map of material ``name`` (created at zero)."""
        if name not in self.materials:
            self.materials[name] = np.zeros(self.shape, np.float32)
        return self.materials[name]

    def _matrix(self, centre_xy: tuple[float, float], anchor_xy: tuple[float, float], tilt: float,
                flip: bool) -> np.ndarray:
        return object_matrix(centre_xy, anchor_xy, tilt, self.foreshorten, self.shear, flip)

    def add_tooth(self, tooth: ToothMaps, cej_xy: tuple[float, float], tilt: float, flip: bool) -> None:
        """Place ``tooth`` with its CEJ centre at scene ``cej_xy`` (px); ``flip`` = crown down."""
        h, w = tooth.root.shape
        matrix = self._matrix(cej_xy, (w / 2.0, tooth.cej_row), tilt, flip)
        for name, local in tooth.materials.items():
            warp_into(self.layer(name), local, matrix, self.shape)
        warp_into(self.roots, tooth.root.astype(np.float32), matrix, self.shape)

    def add_local(self, name: str, local: np.ndarray, anchor_xy: tuple[float, float],
                  centre_xy: tuple[float, float], tilt: float, flip: bool) -> None:
        """Warp any local thickness map of material ``name`` so that ``anchor_xy`` lands on ``centre_xy``."""
        warp_into(self.layer(name), local, self._matrix(centre_xy, anchor_xy, tilt, flip), self.shape)

    def add_implant(self, design: ImplantDesign, system: str, bone_xy: tuple[float, float], tilt: float,
                    flip: bool) -> tuple[float, float]:
        """Place an implant whose bone-level axis point lands on ``bone_xy`` (scene px).

        Adds its titanium thickness, records its annotation (when any of it is visible)
        and returns the scene position of its coronal end (the platform centre).
        """
        prof = render_implant_profile(design, self.pixel_mm)
        h, w = prof.silhouette.shape
        matrix = self._matrix(bone_xy, (w / 2.0, prof.bone_level_row), tilt, flip)
        warp_into(self.layer("titanium"), prof.thickness, matrix, self.shape)
        labels = np.zeros((h, w), np.uint8)
        for k in range(3):
            labels[prof.parts[k]] = k + 1
        top = matrix @ np.array([w / 2.0, float(prof.part_rows[0][0]), 1.0])
        apex = matrix @ np.array([w / 2.0, float(prof.part_rows[2][1]), 1.0])
        warped = warp_into(None, labels, matrix, self.shape, nearest=True)
        if warped is None:
            return float(top[0]), float(top[1])
        patch, x0, y0 = warped
        whole = _crop(patch > 0, x0, y0)
        if whole is None:
            return float(top[0]), float(top[1])
        contours, _ = cv2.findContours(prof.silhouette.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64) + 0.5
        scene_pts = pts @ matrix[:, :2].T + matrix[:, 2]
        rows, cols = self.shape
        truncated = bool((scene_pts[:, 0] < 0).any() or (scene_pts[:, 1] < 0).any()
                         or (scene_pts[:, 0] > cols).any() or (scene_pts[:, 1] > rows).any())
        parts = []
        for k, name in enumerate(PART_NAMES):
            cropped = _crop(patch == k + 1, x0, y0)
            if cropped is not None:
                parts.append(PartAnnotation(name=name, box=cropped[0], mask=cropped[1]))
        self.implants.append(ImplantAnnotation(
            implant_id=len(self.implants), box=whole[0], mask=whole[1], parts=parts, design=design,
            system=system, truncated=truncated,
            axis=(float(top[0]), float(top[1]), float(apex[0]), float(apex[1]))))
        return float(top[0]), float(top[1])

    def overlaps(self, box: Box, margin_px: float) -> bool:
        """True when ``box`` comes within ``margin_px`` of an implant already placed."""
        return any(not (box[2] + margin_px <= b.box[0] or b.box[2] + margin_px <= box[0]
                        or box[3] + margin_px <= b.box[1] or b.box[3] + margin_px <= box[1])
                   for b in self.implants)

    def flip_vertical(self) -> None:
        """Mirror the scene top-bottom (lower-jaw layout → upper jaw): maps and annotations."""
        rows = self.shape[0]
        for name in self.materials:
            self.materials[name] = np.ascontiguousarray(self.materials[name][::-1])
        self.roots = np.ascontiguousarray(self.roots[::-1])
        for imp in self.implants:
            imp.box = _flip_box(imp.box, rows)
            imp.mask = np.ascontiguousarray(imp.mask[::-1])
            imp.axis = (imp.axis[0], rows - imp.axis[1], imp.axis[2], rows - imp.axis[3])
            for part in imp.parts:
                part.box = _flip_box(part.box, rows)
                part.mask = np.ascontiguousarray(part.mask[::-1])

    def sockets(self, bone: np.ndarray) -> np.ndarray:
        """Bone map with tooth sockets: root volume removed, a dark periodontal ligament
        space (~0.2 mm) and a bright lamina dura (~0.3 mm) around every root. float32."""
        root = (self.roots > 0.5).astype(np.uint8)
        if not root.any():
            return bone

        def ring(mm: float) -> np.ndarray:
            k = max(1, int(round(mm / self.pixel_mm)))
            return cv2.dilate(root, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))

        pdl = ring(0.2)
        lamina = ring(0.5)
        out = bone * (1.0 - 0.3 * np.clip(self.roots, 0.0, 1.0))
        out = np.where((pdl > 0) & (root == 0), out * 0.7, out)
        lam = cv2.GaussianBlur(((lamina > 0) & (pdl == 0)).astype(np.float32), (0, 0), max(0.5, 0.05 / self.pixel_mm))
        return (out + 1.8 * lam * (bone > 0.5)).astype(np.float32)


def implant_clearance_ok(builder: SceneBuilder, design: ImplantDesign, bone_xy: tuple[float, float],
                         tilt: float, flip: bool, margin_mm: float = 0.6) -> bool:
    """Whether an implant placed so would keep ``margin_mm`` from the implants already placed."""
    length_px = (design.length_mm + design.collar_mm) / builder.pixel_mm
    radius_px = 0.62 * design.diameter_mm / builder.pixel_mm
    a = math.radians(tilt)
    sign = -1.0 if flip else 1.0
    dx, dy = -math.sin(a) * length_px * sign, math.cos(a) * length_px * sign
    xs = (bone_xy[0], bone_xy[0] + dx)
    ys = (bone_xy[1] - sign * design.collar_mm / builder.pixel_mm, bone_xy[1] + dy)
    box = (min(xs) - radius_px, min(ys), max(xs) + radius_px, max(ys))
    return not builder.overlaps(box, margin_mm / builder.pixel_mm)
