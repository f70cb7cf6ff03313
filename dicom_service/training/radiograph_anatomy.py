"""Anatomy for the synthetic radiographs: bone texture, teeth and restorations.

Everything here is a **projected thickness map**: ``(rows, cols)`` float32 arrays of the
path length in mm of one material along the X-ray beam, indexed ``[row, column]``.
Teeth are built in a local frame (crown up, roots down, axis at the centre column) and
placed into a scene with :func:`warp_into`. Random draws use the caller's
``numpy.random.Generator`` only, so scenes are deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

TOOTH_TYPES: dict[str, tuple[float, float, float, int]] = {
    # crown width, crown height, root length (mm), number of roots
    "incisor": (6.5, 9.5, 13.0, 1),
    "canine": (7.5, 10.0, 16.0, 1),
    "premolar": (7.0, 8.0, 14.0, 1),
    "molar": (10.0, 7.0, 13.0, 2),
}


def band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Band-limited noise (difference of Gaussians), ``shape`` float32, zero mean, unit std.

    ``sigma_px`` is the feature size in pixels (the pass band is around it).
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    fine = cv2.GaussianBlur(white, (0, 0), max(sigma_px, 0.5))
    coarse = cv2.GaussianBlur(white, (0, 0), max(2.0 * sigma_px, 1.0))
    out = fine - coarse
    return (out - out.mean()) / (out.std() + 1e-6)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Low-frequency value noise, ``shape`` float32, zero mean, unit std; ``cell_px`` = feature size."""
    small = (max(2, int(round(shape[0] / cell_px)) + 2), max(2, int(round(shape[1] / cell_px)) + 2))
    out = cv2.resize(rng.standard_normal(small, dtype=np.float32), (shape[1], shape[0]),
                     interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / (out.std() + 1e-6)


def trabecular_bone(rng: np.random.Generator, shape: tuple[int, int], pixel_mm: float) -> np.ndarray:
    """Trabecular pattern in ``[0, 1]``, ``shape`` float32: ~1 on the struts, low in marrow spaces.

    Marrow spaces are the high lobes of band-limited noise at two scales (~0.6 and
    ~0.3 mm), soft-thresholded so that they are rounded and of varied size; the bone
    left between them forms a connected lattice of struts.
    """
    big = band_noise(rng, shape, 0.30 / pixel_mm)
    small = band_noise(rng, shape, 0.14 / pixel_mm)
    spaces = 1.0 / (1.0 + np.exp(-4.0 * (0.65 * big + 0.45 * small - 0.25)))
    lattice = 1.0 - spaces
    return np.clip(lattice, 0.0, 1.0).astype(np.float32)


def _ellipsoid(x: np.ndarray, z: np.ndarray, a: float, b: float, depth: float, power: float = 2.0) -> np.ndarray:
    """Projected path length (mm) through a super-ellipsoid of half-axes ``a`` (x), ``b`` (z)."""
    rho = np.abs(x / a) ** power + np.abs(z / b) ** 2.0
    return (depth * np.sqrt(np.clip(1.0 - rho, 0.0, None))).astype(np.float32)


def _root(x: np.ndarray, z: np.ndarray, centre: float, top: float, length: float, hw_top: float,
          depth: float, drift: float) -> np.ndarray:
    """Path length (mm) through a tapering root from ``top`` down ``length`` mm, rounded apex."""
    t = np.clip((z - top) / length, 0.0, 1.0)
    hw = hw_top * (1.0 - 0.75 * t) * np.sqrt(np.clip((1.0 - t) / 0.12, 0.0, 1.0))
    xc = centre + drift * t ** 2
    valid = (z >= top) & (z <= top + length)
    rho = ((x - xc) / np.maximum(hw, 1e-3)) ** 2
    return np.where(valid, depth * (1.0 - 0.5 * t) * np.sqrt(np.clip(1.0 - rho, 0.0, None)), 0.0)


@dataclass
class ToothMaps:
    """Local thickness maps of one tooth (crown up, roots down, axis at column ``W / 2``).

    Attributes
    ----------
    materials : dict of str to np.ndarray
        ``(H, W)`` float32 mm per material: ``enamel``, ``dentine``, ``pulp`` and, when
        restored, ``crown``, ``filling``, ``composite``, ``gutta_percha``.
    root : np.ndarray
        ``(H, W)`` bool, root silhouette below the cemento-enamel junction (CEJ).
    cej_row : float
        Row of the CEJ in the local frame.
    pixel_mm : float
    """

    materials: dict[str, np.ndarray]
    root: np.ndarray
    cej_row: float
    pixel_mm: float
    restorations: list[str] = field(default_factory=list)


def _crown_half_width(z: np.ndarray, width: float, crown_h: float, cej_hw: float) -> np.ndarray:
    """Mesio-distal half-width (mm) of a crown at depth ``z`` below the occlusal top."""
    a = width / 2.0
    zc = 0.38 * crown_h
    top = a * np.sqrt(np.clip(1.0 - ((zc - z) / zc) ** 2, 0.0, 1.0))
    neck = a - (a - cej_hw) * np.clip((z - zc) / (crown_h - zc), 0.0, 1.0) ** 1.6
    return np.where(z < zc, top, np.where(z <= crown_h, neck, 0.0))


def make_tooth(kind: str, pixel_mm: float, rng: np.random.Generator, *, restore: bool = True,
               prosthetic_only: bool = False) -> ToothMaps:
    """Render one tooth of ``kind`` (a key of :data:`TOOTH_TYPES`) at ``pixel_mm`` mm/pixel.

    The crown is an ellipsoidal-section solid with a rounded occlusal outline (cusps),
    widest at ~40% of its height and narrowing to the cemento-enamel junction (CEJ); an
    enamel cap (~1.5 mm occlusally, thinning to 0 at the CEJ) covers the dentine; roots
    (one, or two for molars on a short trunk) taper to rounded apices; a pulp chamber
    and root canals run inside. With ``restore`` the tooth may get a filling, a full
    crown and/or a root-canal filling. With ``prosthetic_only`` only a ceramic crown shape
    is returned (material ``crown``), as placed on an implant abutment.
    """
    width, crown_h, root_len, n_roots = TOOTH_TYPES[kind]
    width *= rng.uniform(0.92, 1.08)
    root_len *= rng.uniform(0.85, 1.1)
    total = crown_h + root_len + 1.0
    rows, cols = int(math.ceil(total / pixel_mm)), int(math.ceil((width + 1.5) / pixel_mm))
    z = ((np.arange(rows) + 0.5) * pixel_mm - 0.5)[:, None]  # mm below the occlusal top
    x = ((np.arange(cols) + 0.5) * pixel_mm - cols * pixel_mm / 2.0)[None, :]
    bl = 0.95  # bucco-lingual / mesio-distal ratio: depth of the ellipsoidal section
    cej_hw = (0.40 if n_roots > 1 else 0.36) * width
    lobes = 2.0 if n_roots > 1 else 1.0
    cusp = 0.0 if kind == "incisor" else 0.45 * (1.0 - np.cos(2.0 * np.pi * lobes * x / width)) / 2.0
    zo = z - cusp * np.clip(1.0 - z / crown_h, 0.0, 1.0)
    hw = _crown_half_width(zo, width, crown_h, cej_hw)
    outer = 2.0 * bl * hw * np.sqrt(np.clip(1.0 - (x / np.maximum(hw, 1e-3)) ** 2, 0.0, None))
    enamel_t = 1.8 * np.clip(1.0 - z / crown_h, 0.0, 1.0) ** 0.7
    hw_in = np.maximum(_crown_half_width(zo - 0.6 * enamel_t, width, crown_h, cej_hw) - enamel_t, 0.0)
    core = 2.0 * bl * hw_in * np.sqrt(np.clip(1.0 - (x / np.maximum(hw_in, 1e-3)) ** 2, 0.0, None))
    depth = 2.0 * bl * cej_hw
    root_top = crown_h - 0.3
    if n_roots == 1:
        roots = _root(x, z, 0.0, root_top, root_len, cej_hw, depth, rng.uniform(-0.8, 0.8))
        canals = [_root(x, z, 0.0, root_top, root_len - 0.6, 0.08 * width, 0.2 * depth, 0.0)]
    else:
        spread = 0.22 * width
        trunk = _root(x, z, 0.0, root_top, 4.0, cej_hw, depth, 0.0)
        r1 = _root(x, z, -spread, root_top + 1.5, root_len, 0.19 * width, 0.75 * depth, -0.6)
        r2 = _root(x, z, spread, root_top + 1.5, root_len * 0.95, 0.19 * width, 0.75 * depth, 0.6)
        roots = np.maximum(np.maximum(r1, r2), trunk)
        canals = [_root(x, z, s * spread, root_top + 1.5, root_len - 0.8, 0.04 * width, 0.15 * depth, s * 0.6)
                  for s in (-1.0, 1.0)]
    canal = np.maximum.reduce(canals)
    chamber = _ellipsoid(x, z - (crown_h - 0.8), 0.26 * width, 1.5, 0.35 * depth, 3.0)
    pulp = np.maximum(chamber, canal).astype(np.float32)
    tooth_root = np.where(z >= crown_h, roots, 0.0)
    dentine = np.maximum(core, np.where(z >= root_top, roots, 0.0))
    enamel = np.clip(outer - core, 0.0, None)
    materials = {"enamel": enamel.astype(np.float32),
                 "dentine": np.clip(dentine - pulp, 0.0, None).astype(np.float32),
                 "pulp": pulp}
    zc = 0.5 * crown_h
    restorations: list[str] = []
    if prosthetic_only:
        crown = np.where(z < crown_h + 0.5, outer, 0.0).astype(np.float32)
        materials = {"crown": crown}
        restorations.append("crown")
    elif restore:
        draw = rng.random(3)
        if draw[0] < 0.15:  # full crown: a metal-ceramic shell over a prepared stump
            stump = _ellipsoid(x, z - zc - 1.4, width / 2.0 - 1.6, crown_h * 0.6 - 1.2, depth - 3.0, 3.0)
            shell = np.where(z < crown_h + 0.3, np.clip(outer * 1.04 - stump, 0.0, None), 0.0)
            materials["crown"] = shell.astype(np.float32)
            materials["enamel"] = np.zeros_like(enamel, dtype=np.float32)
            materials["dentine"] = np.where(z < crown_h, np.minimum(materials["dentine"], stump),
                                            materials["dentine"]).astype(np.float32)
            restorations.append("crown")
        elif draw[1] < 0.35:  # occlusal or proximal filling (amalgam or composite)
            fx = rng.uniform(-0.25, 0.25) * width
            fill = _ellipsoid(x - fx, z - rng.uniform(1.0, 2.2), rng.uniform(0.15, 0.3) * width,
                              rng.uniform(1.2, 2.2), 0.5 * depth, 2.5)
            kind_fill = "filling" if rng.random() < 0.5 else "composite"
            materials[kind_fill] = fill
            materials["enamel"] = np.clip(materials["enamel"] - fill, 0.0, None)
            restorations.append(kind_fill)
        if draw[2] < 0.1 or "crown" in restorations and draw[2] < 0.4:  # root-canal filling
            materials["gutta_percha"] = np.where(z > crown_h - 1.0, canal * 1.4, 0.0).astype(np.float32)
            materials["pulp"] = np.where(z > crown_h - 1.0, 0.0, pulp).astype(np.float32)
            restorations.append("root_canal_filling")
    return ToothMaps(materials=materials, root=tooth_root > 0.05, cej_row=crown_h / pixel_mm,
                     pixel_mm=pixel_mm, restorations=restorations)


def warp_into(canvas: np.ndarray | None, local: np.ndarray, matrix: np.ndarray,
              shape: tuple[int, int], *, nearest: bool = False,
              ) -> tuple[np.ndarray, int, int] | None:
    """Warp ``local`` by the affine ``matrix`` into a scene of ``shape`` (rows, cols).

    Parameters
    ----------
    canvas : np.ndarray or None
        ``shape`` float32 accumulator; the warped values are **added** into it when given.
    local : np.ndarray
        ``(h, w)`` map in its local frame (float32, or uint8 labels with ``nearest``).
    matrix : np.ndarray
        ``(2, 3)`` float64, maps local ``(x, y)`` (column, row; pixel centres at
        integer + 0.5) to scene ``(x, y)``.
    nearest : bool
        Nearest-neighbour sampling (for label maps); bilinear otherwise.

    Returns
    -------
    (np.ndarray, int, int) or None
        The warped patch ``(ph, pw)`` (same dtype as ``local``) and its scene offset
        ``(x0, y0)``; ``None`` when the object falls wholly outside the scene.
    """
    h, w = local.shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ matrix.T
    x0 = max(int(math.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(corners[:, 0].max())) + 1, shape[1])
    y1 = min(int(math.ceil(corners[:, 1].max())) + 1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    shifted = matrix.astype(np.float64).copy()
    # pixel-centre convention: cv2 maps centres at integers, ours at +0.5
    shifted[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    shifted[:, 2] -= (x0, y0)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    patch = cv2.warpAffine(local, shifted, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    if canvas is not None:
        canvas[y0:y1, x0:x1] += patch
    return patch, x0, y0


def object_matrix(centre_xy: tuple[float, float], anchor_xy: tuple[float, float], tilt_deg: float,
                  foreshorten: float, shear: float, flip: bool = False) -> np.ndarray:
    """Affine ``(2, 3)`` from a local frame (pixel units) to the scene.

    The local point ``anchor_xy`` lands on the scene point ``centre_xy``. The local frame
    is first flipped vertically (``flip``, for upper-jaw objects), sheared horizontally
    by ``shear`` (x += shear * y), its y axis scaled by ``foreshorten`` (the cos factor
    of vertical angulation), then rotated by ``tilt_deg`` (positive = clockwise on screen).
    """
    a = math.radians(tilt_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = rot @ np.array([[1.0, shear], [0.0, foreshorten]]) @ np.diag([1.0, -1.0 if flip else 1.0])
    offset = np.asarray(centre_xy, np.float64) - lin @ np.asarray(anchor_xy, np.float64)
    return np.hstack([lin, offset[:, None]])
