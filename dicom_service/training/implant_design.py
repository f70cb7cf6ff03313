"""Parametric dental implant designs (seed 002 taxonomy) and their radiographic profiles.

Seed 002 (section 2) classifies an implant by its three thirds:

* **coronal**: platform (bone level / tissue level), microthread (yes / no) and the
  coronal thread design;
* **middle**: body shape (straight / tapered) and thread design (with its pitch);
* **apical**: apical groove (yes / no), apical hole shape (none / round / oval),
  apical body shape (straight / tapered) and apex shape (flat / rounded / pointed / domed).

:class:`ImplantDesign` is one concrete implant (those values plus length and diameter in
mm). :func:`render_implant_profile` turns it into a 2-D radiographic profile: the implant
is modelled as a solid of revolution about a vertical axis, with a serrated outline for
the threads (the two sides offset by half a pitch, as a projected helix is), an internal
connection bore, and a through-hole (the apical hole) parallel to the X-ray beam. The
profile is axis-aligned: coronal end at row 0, apex down; arrays are indexed
``[row, column]``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

PART_NAMES: tuple[str, str, str] = ("coronal", "middle", "apical")
MICROTHREAD_PITCH_MM = 0.25
MICROTHREAD_DEPTH_MM = 0.08


class Platform(str, enum.Enum):
    """Where the implant shoulder sits: at the bone crest or above it (wide collar)."""

    BONE_LEVEL = "bone_level"
    TISSUE_LEVEL = "tissue_level"


class ThreadDesign(str, enum.Enum):
    """Thread profile as seen in an axial section (seed 002, Figure 1)."""

    NONE = "none"
    V_THREAD = "v_thread"
    BUTTRESS = "buttress"
    SQUARE = "square"
    REVERSE_BUTTRESS = "reverse_buttress"


class BodyShape(str, enum.Enum):
    """Body (or apical body) envelope."""

    STRAIGHT = "straight"
    TAPERED = "tapered"


class HoleShape(str, enum.Enum):
    """Shape of the apical through-hole."""

    NONE = "none"
    ROUND = "round"
    OVAL = "oval"


class ApexShape(str, enum.Enum):
    """Shape of the implant tip."""

    FLAT = "flat"
    ROUNDED = "rounded"
    POINTED = "pointed"
    DOMED = "domed"


@dataclass(frozen=True)
class ImplantDesign:
    """One concrete implant: every design value of seed 002 plus its size.

    Attributes
    ----------
    platform : Platform
    microthread : bool
    coronal_thread : ThreadDesign
    body : BodyShape
    body_thread : ThreadDesign
    thread_pitch_mm : float
        Pitch of the macro threads (coronal and middle); ignored when both are ``none``.
    apical_groove : bool
    apical_hole : HoleShape
    apical_body : BodyShape
    apex : ApexShape
    length_mm : float
        Endosseous length (shoulder of a bone-level implant to apex); a tissue-level
        collar adds :attr:`collar_mm` above it.
    diameter_mm : float
        Major (thread) diameter of the body.
    """

    platform: Platform
    microthread: bool
    coronal_thread: ThreadDesign
    body: BodyShape
    body_thread: ThreadDesign
    thread_pitch_mm: float
    apical_groove: bool
    apical_hole: HoleShape
    apical_body: BodyShape
    apex: ApexShape
    length_mm: float
    diameter_mm: float

    def __post_init__(self) -> None:
        for name, kind in (("platform", Platform), ("coronal_thread", ThreadDesign), ("body", BodyShape),
                           ("body_thread", ThreadDesign), ("apical_hole", HoleShape),
                           ("apical_body", BodyShape), ("apex", ApexShape)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError as exc:
                allowed = ", ".join(v.value for v in kind)
                raise ValueError(f"{name}: {value!r} is not one of {allowed}") from exc
        if not 4.0 <= self.length_mm <= 20.0:
            raise ValueError(f"length_mm must be in [4, 20], got {self.length_mm}")
        if not 2.5 <= self.diameter_mm <= 7.0:
            raise ValueError(f"diameter_mm must be in [2.5, 7], got {self.diameter_mm}")
        threaded = self.coronal_thread != ThreadDesign.NONE or self.body_thread != ThreadDesign.NONE
        if threaded and not 0.4 <= self.thread_pitch_mm <= 2.0:
            raise ValueError(f"thread_pitch_mm must be in [0.4, 2] for a threaded design, got {self.thread_pitch_mm}")

    @property
    def collar_mm(self) -> float:
        """Height of the polished tissue-level collar above the bone (0 for bone level)."""
        return 1.8 + 0.1 * self.diameter_mm if self.platform == Platform.TISSUE_LEVEL else 0.0

    @property
    def thread_depth_mm(self) -> float:
        """Radial depth of the macro threads (major minus minor radius)."""
        return float(np.clip(0.09 * self.diameter_mm, 0.25, 0.45))

    def attributes(self) -> dict[str, str]:
        """Design values as strings, keyed as in seed 002 (no size), e.g. ``{"body": "tapered"}``."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if key in ("length_mm", "diameter_mm"):
                continue
            if isinstance(value, enum.Enum):
                out[key] = str(value.value)
            elif isinstance(value, bool):
                out[key] = "yes" if value else "no"
            else:
                out[key] = f"{float(value):g}"
        return out


@dataclass
class ImplantProfile:
    """Radiographic profile of one implant, axis-aligned (coronal end at row 0, apex down).

    Attributes
    ----------
    thickness : np.ndarray
        ``(H, W)`` float32, metal path length in mm along the X-ray beam.
    silhouette : np.ndarray
        ``(H, W)`` bool, the implant outline filled (apical hole included).
    metal : np.ndarray
        ``(H, W)`` bool, pixels with metal (the silhouette minus the through-hole).
    parts : np.ndarray
        ``(3, H, W)`` bool, the coronal, middle and apical parts (order of
        :data:`PART_NAMES`); they tile the silhouette by rows.
    part_rows : tuple of (int, int)
        ``[start, stop)`` row range of each part.
    bone_level_row : float
        Row of the bone-level line (top of the endosseous part; 0 for bone level).
    pixel_mm : float
        Pixel size in mm.
    """

    thickness: np.ndarray
    silhouette: np.ndarray
    metal: np.ndarray
    parts: np.ndarray
    part_rows: tuple[tuple[int, int], ...]
    bone_level_row: float
    pixel_mm: float


def _thread_shape(phase: np.ndarray, design: ThreadDesign) -> np.ndarray:
    """Thread crest height in ``[0, 1]`` for ``phase`` in ``[0, 1)`` (z / pitch, apex = +z).

    Buttress: a gentle coronal flank and a steep apical (load) flank; reverse buttress
    is its mirror image; square: a flat crest with nearly vertical flanks.
    """
    if design == ThreadDesign.V_THREAD:
        return 1.0 - np.abs(2.0 * phase - 1.0)
    if design == ThreadDesign.SQUARE:
        return np.clip(np.minimum(phase - 0.2, 0.8 - phase) / 0.06, 0.0, 1.0)
    if design == ThreadDesign.BUTTRESS:
        return np.where(phase < 0.75, phase / 0.75, np.clip((0.85 - phase) / 0.1, 0.0, 1.0))
    if design == ThreadDesign.REVERSE_BUTTRESS:
        return _thread_shape(1.0 - phase, ThreadDesign.BUTTRESS)
    return np.zeros_like(phase)


def _body_envelope(design: ImplantDesign, zs: np.ndarray) -> np.ndarray:
    """Major radius (mm) without apex shaping along ``zs`` (mm from the bone-level line), ``(N,)``."""
    radius = design.diameter_mm / 2.0
    third = design.length_mm / 3.0
    taper_body = 0.14 if design.body == BodyShape.TAPERED else 0.0
    end_middle = radius * (1.0 - taper_body)
    env = radius * (1.0 - taper_body * np.clip((zs - third) / third, 0.0, 1.0))
    taper_apical = 0.30 if design.apical_body == BodyShape.TAPERED else 0.0
    apical = end_middle * (1.0 - taper_apical * np.clip((zs - 2.0 * third) / third, 0.0, 1.0))
    return np.where(zs >= 2.0 * third, apical, env)


def _envelope(design: ImplantDesign, zs: np.ndarray) -> np.ndarray:
    """Major radius (mm) with the apex shape along ``zs`` (mm from the bone-level line), ``(N,)``."""
    length = design.length_mm
    env = _body_envelope(design, zs)
    tip = _apex_height(design)
    base = float(_body_envelope(design, np.array([length - tip]))[0])
    zt = np.clip(zs - (length - tip), 0.0, tip)
    s = zt / tip
    if design.apex == ApexShape.FLAT:
        shaped = base - 0.25 * base * np.clip((s - 0.6) / 0.4, 0.0, 1.0)
    elif design.apex == ApexShape.ROUNDED:
        corner = 0.45 * base
        dz = np.clip(zt - (tip - corner), 0.0, corner)
        shaped = base - corner + np.sqrt(np.maximum(corner ** 2 - dz ** 2, 0.0))
    elif design.apex == ApexShape.POINTED:
        shaped = base * (1.0 - 0.85 * s)
    else:  # domed: a half ellipse over the whole tip
        shaped = base * np.sqrt(np.maximum(1.0 - s ** 2, 0.0))
    env = np.where(zs > length - tip, np.minimum(env, shaped), env)
    return np.where((zs < 0) | (zs > length), 0.0, env)


def _apex_height(design: ImplantDesign) -> float:
    """Axial height (mm) of the apex shaping zone."""
    radius = design.diameter_mm / 2.0
    factor = {ApexShape.FLAT: 0.5, ApexShape.ROUNDED: 0.6, ApexShape.POINTED: 1.4, ApexShape.DOMED: 0.9}
    return min(factor[ApexShape(design.apex)] * radius, design.length_mm / 4.0)


def _side_radius(design: ImplantDesign, zs: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """Outline radius (mm) at axial positions ``zs`` and helix turns ``turn`` (broadcast).

    ``zs`` ``(N, 1)`` is measured from the bone-level line (negative inside a tissue-level
    collar); ``turn`` ``(N, M)`` or ``(1, M)`` is the azimuth in turns, which shifts the
    thread phase as a helix does. Returns the broadcast shape, float64 mm.
    """
    length, radius = design.length_mm, design.diameter_mm / 2.0
    env = _envelope(design, zs)
    third = length / 3.0
    depth = np.zeros_like(zs)
    shape = np.zeros_like(zs)
    pitch = max(design.thread_pitch_mm, 0.4)
    phase = np.mod(zs / pitch + turn, 1.0)
    micro_end = 0.5 * third if design.microthread else 0.0
    micro = (zs >= 0.15) & (zs < micro_end)
    coronal = (zs >= max(micro_end, 0.3)) & (zs < third)
    body = zs >= third
    if design.microthread:
        mphase = np.mod(zs / MICROTHREAD_PITCH_MM + turn, 1.0)
        shape = np.where(micro, _thread_shape(mphase, ThreadDesign.V_THREAD), shape)
        depth = np.where(micro, MICROTHREAD_DEPTH_MM, depth)
    shape = np.where(coronal, _thread_shape(phase, design.coronal_thread), shape)
    depth = np.where(coronal & (design.coronal_thread != ThreadDesign.NONE), design.thread_depth_mm, depth)
    shape = np.where(body, _thread_shape(phase, design.body_thread), shape)
    depth = np.where(body & (design.body_thread != ThreadDesign.NONE), design.thread_depth_mm, depth)
    tip = _apex_height(design)
    depth = depth * np.clip((length - zs) / tip, 0.0, 1.0)  # threads run out at the apex
    r = np.maximum(env - depth * (1.0 - shape), 0.0)
    if design.platform == Platform.TISSUE_LEVEL:
        collar = design.collar_mm
        u = np.clip(-zs / collar, 0.0, 1.0)  # 0 at the bone line, 1 at the shoulder
        flare = radius + (1.22 * radius - radius) * u ** 1.6
        flare = np.where(u > 0.93, flare - 0.5 * radius * (u - 0.93) / 0.07, flare)  # shoulder bevel
        r = np.where(zs < 0, np.where(zs >= -collar, flare, 0.0), r)
    else:
        bevel = np.clip(1.0 - zs / 0.15, 0.0, 1.0)
        r = np.where(zs < 0.15, radius * (1.0 - 0.08 * bevel), r)
        r = np.where(zs < 0, 0.0, r)
    return r


def _chord(radius: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Path length ``2 sqrt(r^2 - x^2)`` through a disc of ``radius`` (mm) at lateral ``x`` (mm)."""
    return 2.0 * np.sqrt(np.maximum(radius ** 2 - x ** 2, 0.0))


def render_implant_profile(design: ImplantDesign, pixel_mm: float, supersample: int | None = None) -> ImplantProfile:
    """Render the radiographic profile of ``design`` at ``pixel_mm`` mm per pixel.

    Parameters
    ----------
    design : ImplantDesign
    pixel_mm : float
        Output pixel size (mm/pixel), e.g. 0.03 for a native periapical detector.
    supersample : int, optional
        Sub-pixels per pixel and axis used for anti-aliasing (area averaging); by default
        enough for sub-pixels of at most 0.025 mm (1 to 4).

    Returns
    -------
    ImplantProfile
        ``H = ceil(total height / pixel_mm) + 2`` rows and ``W`` columns with one pixel of
        margin around the implant; the axis is the column centre ``W / 2``.
    """
    if not 0.005 <= pixel_mm <= 1.0:
        raise ValueError(f"pixel_mm must be in [0.005, 1], got {pixel_mm}")
    if supersample is None:
        supersample = int(np.clip(math.ceil(pixel_mm / 0.025 - 1e-9), 1, 4))
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    radius = design.diameter_mm / 2.0
    collar = design.collar_mm
    total = collar + design.length_mm
    rows = int(math.ceil(total / pixel_mm)) + 2
    cols = 2 * (int(math.ceil(1.25 * radius / pixel_mm)) + 1)
    sub = pixel_mm / supersample
    z = (np.arange(rows * supersample) + 0.5) * sub - pixel_mm - collar  # mm from bone line
    x = (np.arange(cols * supersample) + 0.5) * sub - cols * pixel_mm / 2.0
    zz, xx = z[:, None], x[None, :]
    # A helical ridge seen along the beam: the ray at lateral x meets the front surface at
    # azimuth asin(x / R) and the back one at pi - asin(x / R); each half-chord uses the
    # outline radius at its own thread phase, which slants the projected threads.
    azimuth = np.arcsin(np.clip(xx / radius, -1.0, 1.0)) / (2.0 * np.pi)
    r_front = _side_radius(design, zz, azimuth)
    r_back = _side_radius(design, zz, 0.5 - azimuth)
    inside = np.abs(xx) < np.maximum(r_front, r_back)
    thick = _chord(r_front, xx) / 2.0 + _chord(r_back, xx) / 2.0
    # internal connection: a bore from the shoulder, radius 0.35 R, down to ~28% of the length
    bore_r = 0.35 * radius
    bore = ((z >= -collar) & (z < 0.28 * design.length_mm))[:, None]
    thick = np.where(bore, np.maximum(thick - _chord(np.full_like(r_front, bore_r), xx), 0.0), thick)
    zz = z[:, None]
    tip = _apex_height(design)
    third = design.length_mm / 3.0
    if design.apical_groove:
        top, bottom = design.length_mm - 0.85 * third, design.length_mm - 0.5 * tip
        slant = 0.15 * radius * (zz - top) / max(bottom - top, 1e-6)
        groove = (zz > top) & (zz < bottom) & (xx > 0.35 * radius + slant)
        thick = np.where(groove, 0.3 * thick, thick)
    if design.apical_hole != HoleShape.NONE:
        half_w = 0.30 * radius
        half_h = half_w if design.apical_hole == HoleShape.ROUND else 2.2 * half_w
        centre = design.length_mm - tip - half_h - 0.25 * radius
        hole = ((xx / half_w) ** 2 + ((zz - centre) / half_h) ** 2) < 1.0
        thick = np.where(hole, 0.0, thick)
    else:
        hole = np.zeros_like(inside)
    area = cv2.INTER_AREA
    thickness = cv2.resize(thick.astype(np.float32), (cols, rows), interpolation=area)
    silhouette = cv2.resize(inside.astype(np.float32), (cols, rows), interpolation=area) >= 0.5
    metal = silhouette & (cv2.resize((inside & ~hole).astype(np.float32), (cols, rows), interpolation=area) >= 0.5)
    row_z = (np.arange(rows) + 0.5) * pixel_mm - pixel_mm - collar
    bounds = (-np.inf, third, 2.0 * third, np.inf)
    parts = np.zeros((3, rows, cols), bool)
    part_rows: list[tuple[int, int]] = []
    for k in range(3):
        band = (row_z >= bounds[k]) & (row_z < bounds[k + 1])
        parts[k] = silhouette & band[:, None]
        idx = np.flatnonzero(band)
        part_rows.append((int(idx[0]), int(idx[-1]) + 1))
    return ImplantProfile(thickness=thickness, silhouette=silhouette, metal=metal, parts=parts,
                          part_rows=tuple(part_rows), bone_level_row=(collar + pixel_mm) / pixel_mm,
                          pixel_mm=float(pixel_mm))
