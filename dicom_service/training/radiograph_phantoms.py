"""Synthetic periapical and panoramic radiographs with implants, deterministic by seed.

A scene is laid out in millimetres (teeth, implants from :mod:`implant_systems`, bone,
soft tissue), accumulated as per-material thickness maps by
:class:`~dicom_service.training.radiograph_scene.SceneBuilder`, and imaged by the chain
of :mod:`radiograph_physics` (line integral, metal bloom, exposure with PSF, quantum
and electronic noise, saturation burn-out, log/gamma display to 12-bit uint16).

Formats (``rows x cols`` at mm/pixel):

* :data:`PERIAPICAL_416`: 416 x 416 at 0.075 mm (a 31 x 31 mm field, the size seed 002
  trained on);
* :data:`PERIAPICAL_NATIVE`: 1000 x 1300 at 0.03 mm (a 30 x 39 mm size-2 sensor);
* :data:`PANORAMIC`: 1000 x 2000 at 0.1 mm (100 x 200 mm).

Periapicals are laid out as a lower jaw (crowns up) and mirrored for an upper jaw
(crowns down, with a sinus floor); they hold 0 to 3 implants. Panoramics hold 1 to 6
implants in both jaws. Vertical angulation foreshortens every object by ``cos(angle)``
and a small horizontal shear is applied scene-wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dicom_service.training.implant_systems import ImplantSystem, load_implant_systems
from dicom_service.training.radiograph_anatomy import (
    TOOTH_TYPES,
    make_tooth,
    smooth_noise,
    trabecular_bone,
)
from dicom_service.training.radiograph_physics import (
    METALS,
    DetectorParams,
    add_metal_bloom,
    detect,
    display,
    line_integral,
)
from dicom_service.training.radiograph_scene import RadiographScene, SceneBuilder, implant_clearance_ok

PERIAPICAL_416: tuple[tuple[int, int], float] = ((416, 416), 0.075)
PERIAPICAL_NATIVE: tuple[tuple[int, int], float] = ((1000, 1300), 0.03)
PANORAMIC: tuple[tuple[int, int], float] = ((1000, 2000), 0.1)
_ARCH = ("incisor", "incisor", "canine", "premolar", "premolar", "molar", "molar", "molar")


def _superstructure(builder: SceneBuilder, rng: np.random.Generator, kind: str, top_xy: tuple[float, float],
                    diameter_mm: float, tilt: float, flip: bool) -> None:
    """Abutment + ceramic crown (55%), a healing cap (20%) or nothing on an implant platform."""
    draw = rng.random()
    if draw > 0.75:
        return
    p = builder.pixel_mm
    height = 4.5 if draw < 0.55 else rng.uniform(2.0, 3.5)
    radius = 0.38 * diameter_mm if draw < 0.55 else 0.5 * diameter_mm
    rows, cols = int(math.ceil(height / p)) + 2, 2 * int(math.ceil(radius / p)) + 4
    x = (np.arange(cols) + 0.5) * p - cols * p / 2.0
    z = (np.arange(rows) + 0.5) * p
    chord = 2.0 * np.sqrt(np.clip(radius ** 2 - x[None, :] ** 2, 0.0, None))
    cap = np.where(z[:, None] < height, chord, 0.0).astype(np.float32)
    builder.add_local("titanium", cap, (cols / 2.0, height / p), top_xy, tilt, flip)
    if draw < 0.55:
        crown = make_tooth(kind, p, rng, prosthetic_only=True)
        h, w = crown.root.shape
        builder.add_local("crown", crown.materials["crown"], (w / 2.0, crown.cej_row + 2.5 / p), top_xy, tilt, flip)


def _system_design(systems: Sequence[ImplantSystem], rng: np.random.Generator, max_diameter: float):
    system = systems[int(rng.integers(len(systems)))]
    design = system.sample(rng)
    if design.diameter_mm > max_diameter:
        design = system.make(design.length_mm, max(system.diameter_mm[0], min(max_diameter, design.diameter_mm)))
    return system, design


def _physics(builder: SceneBuilder, params: DetectorParams, rng: np.random.Generator) -> np.ndarray:
    """Image the builder's thickness maps: uint16 ``(rows, cols)`` with 12 bits stored."""
    attenuation = line_integral(builder.materials)
    metals = {k: v for k, v in builder.materials.items() if k in METALS}
    metal = line_integral(metals) if metals else np.zeros(builder.shape, np.float32)
    anatomy = attenuation - metal
    high = float(np.percentile(anatomy[::3, ::3], 99.5))
    attenuation = add_metal_bloom(attenuation, metal, params)
    return display(detect(attenuation, params, rng), params, high)


def render_periapical(seed: int, *, size: tuple[int, int] = PERIAPICAL_416[0], pixel_mm: float | None = None,
                      systems: Sequence[ImplantSystem] | None = None, implants: int | None = None,
                      ) -> RadiographScene:
    """Render a periapical scene.

    Parameters
    ----------
    seed : int
        Everything random derives from it: the same seed gives the same scene.
    size : tuple of int
        ``(rows, cols)``; 416 x 416 by default.
    pixel_mm : float, optional
        Pixel size; by default 0.075 mm for 416 x 416 images, else 0.03 mm.
    systems : sequence of ImplantSystem, optional
        Systems to draw implants from; the bundled synthetic ones by default.
    implants : int, optional
        Number of implants (0 to 3); drawn at random (0: 20%, 1: 40%, 2: 30%, 3: 10%) by default.

    Returns
    -------
    RadiographScene
        ``image`` ``(rows, cols)`` uint16 and one annotation per (partly) visible implant.
    """
    rows, cols = size
    if rows < 128 or cols < 128:
        raise ValueError(f"periapical size must be at least 128 x 128, got {size}")
    if implants is not None and not 0 <= implants <= 3:
        raise ValueError(f"implants must be in [0, 3], got {implants}")
    p = float(pixel_mm) if pixel_mm is not None else (PERIAPICAL_416[1] if max(size) <= 600 else 0.03)
    pool = list(systems) if systems is not None else load_implant_systems()
    rng = np.random.default_rng(seed)
    angle = math.radians(rng.uniform(-15.0, 15.0))
    builder = SceneBuilder((rows, cols), p, foreshorten=math.cos(angle), shear=float(rng.uniform(-0.05, 0.05)))
    height_mm, width_mm = rows * p, cols * p
    occlusal_mm = rng.uniform(0.5, 0.3 * height_mm)
    kinds = ["premolar", "premolar", "molar", "molar"] if rng.random() < 0.7 else ["incisor", "incisor",
                                                                                   "canine", "premolar"]
    if rng.random() < 0.5:
        kinds = kinds[::-1]
    slots: list[tuple[str, float]] = []
    x = -rng.uniform(0.0, 5.0)
    while x < width_mm and len(slots) < 8:
        kind = kinds[min(len(slots), len(kinds) - 1)]
        w = TOOTH_TYPES[kind][0] + 0.4
        slots.append((kind, x + w / 2.0))
        x += w
    n_implants = implants if implants is not None else int(rng.choice(4, p=[0.2, 0.4, 0.3, 0.1]))
    n_implants = min(n_implants, len(slots))
    implant_slots = set(rng.choice(len(slots), size=n_implants, replace=False).tolist())
    crown_h = max(TOOTH_TYPES[k][1] for k in kinds)
    cej_mm = occlusal_mm + crown_h
    crest_mm = cej_mm + rng.uniform(1.2, 3.0)
    for i, (kind, cx_mm) in enumerate(slots):
        tilt = rng.uniform(-6.0, 6.0)
        if i in implant_slots:
            system, design = _system_design(pool, rng, TOOTH_TYPES[kind][0] - 1.5)
            bone_xy = (cx_mm / p, (crest_mm + rng.uniform(-0.4, 0.6)) / p)
            tilt = rng.uniform(-10.0, 10.0)
            if not implant_clearance_ok(builder, design, bone_xy, tilt, False):
                tilt = 0.0
            if implant_clearance_ok(builder, design, bone_xy, tilt, False):
                top = builder.add_implant(design, system.name, bone_xy, tilt, False)
                _superstructure(builder, rng, kind, top, design.diameter_mm, tilt, False)
        elif rng.random() > 0.15:
            tooth = make_tooth(kind, p, rng)
            builder.add_tooth(tooth, (cx_mm / p, (cej_mm + rng.uniform(-0.5, 0.5)) / p), tilt, False)
    # bone: alveolar crest with a cortical line, trabecular interior, optional canal/sinus
    yy = (np.arange(rows, dtype=np.float32) * p)[:, None]
    crest = crest_mm + 0.6 * smooth_noise(rng, (1, cols), 3.0 / p)[0][None, :]
    jaw = 1.0 / (1.0 + np.exp(-(yy - crest) / 0.25))
    bone = (5.0 + 2.2 * trabecular_bone(rng, (rows, cols), p) + 0.6 * smooth_noise(rng, (rows, cols), 6.0 / p))
    bone = bone * jaw + 3.0 * np.exp(-((yy - crest - 0.3) / 0.35) ** 2) * jaw
    upper = bool(rng.random() < 0.45)
    feature_mm = crest_mm + rng.uniform(10.0, 16.0)
    if feature_mm < height_mm:
        if upper:  # maxillary sinus: air replaces bone beyond a cortical floor
            floor = feature_mm + 1.5 * smooth_noise(rng, (1, cols), 8.0 / p)[0][None, :]
            sinus = 1.0 / (1.0 + np.exp(-(yy - floor) / 0.4))
            bone = bone * (1.0 - 0.75 * sinus) + 2.5 * np.exp(-((yy - floor) / 0.3) ** 2)
        elif rng.random() < 0.4:  # inferior alveolar canal with thin cortical walls
            half = rng.uniform(0.9, 1.4)
            dist = np.abs(yy - feature_mm - 1.0 * smooth_noise(rng, (1, cols), 10.0 / p)[0][None, :])
            bone = np.where(dist < half, bone * 0.65, bone) + 1.2 * np.exp(-((dist - half) / 0.2) ** 2)
    builder.materials["bone"] = builder.sockets(np.clip(bone, 0.0, None).astype(np.float32))
    soft = 1.5 + 13.0 * np.clip((yy - occlusal_mm + 1.0) / (crest_mm - occlusal_mm + 1.0), 0.0, 1.0)
    builder.materials["soft"] = (soft + 1.5 * smooth_noise(rng, (rows, cols), 8.0 / p)).astype(np.float32)
    if upper:
        builder.flip_vertical()
    params = DetectorParams(photons=rng.uniform(2000, 5000) * (p / 0.075) ** 2,
                            psf_sigma_px=rng.uniform(0.5, 0.9) * (0.075 / p) ** 0.5,
                            electronic_sigma=rng.uniform(2.0, 6.0), burnout_attenuation=rng.uniform(0.18, 0.28),
                            bloom_sigma_px=0.3 / p, bloom_gain=rng.uniform(0.1, 0.3), gamma=rng.uniform(0.8, 1.1))
    image = _physics(builder, params, rng)
    return RadiographScene(image=image, kind="periapical", seed=int(seed), pixel_mm=p, implants=builder.implants)


def render_panoramic(seed: int, *, size: tuple[int, int] = PANORAMIC[0], pixel_mm: float = PANORAMIC[1],
                     systems: Sequence[ImplantSystem] | None = None, implants: int | None = None,
                     ) -> RadiographScene:
    """Render a panoramic scene: both arches, 1 to 6 implants (or ``implants``) along them.

    Parameters and return value as :func:`render_periapical`; the default size is
    1000 x 2000 at 0.1 mm/pixel.
    """
    rows, cols = size
    if rows < 300 or cols < 600:
        raise ValueError(f"panoramic size must be at least 300 x 600, got {size}")
    if implants is not None and not 0 <= implants <= 6:
        raise ValueError(f"implants must be in [0, 6], got {implants}")
    p = float(pixel_mm)
    pool = list(systems) if systems is not None else load_implant_systems()
    rng = np.random.default_rng(seed)
    builder = SceneBuilder((rows, cols), p, foreshorten=1.0, shear=0.0)
    height_mm, width_mm = rows * p, cols * p
    mid = width_mm / 2.0 + rng.uniform(-3.0, 3.0)
    occ0 = height_mm * rng.uniform(0.46, 0.52)
    curve = rng.uniform(0.05, 0.09) * height_mm

    def occlusal(x_mm: np.ndarray | float) -> np.ndarray | float:
        u = (np.asarray(x_mm) - mid) / (0.35 * width_mm)
        return occ0 - curve * u ** 2

    slots: list[tuple[str, float, bool]] = []
    for lower in (False, True):
        for side in (-1.0, 1.0):
            x = mid
            for kind in _ARCH:
                w = TOOTH_TYPES[kind][0] * 1.05
                slots.append((kind, x + side * w / 2.0, lower))
                x += side * w
    n_implants = implants if implants is not None else int(rng.integers(1, 7))
    implant_slots = set(rng.choice(len(slots), size=n_implants, replace=False).tolist())
    gap = 0.8
    for i, (kind, cx_mm, lower) in enumerate(slots):
        sign = 1.0 if lower else -1.0
        tilt = rng.uniform(-4.0, 4.0)
        occ = float(occlusal(cx_mm))
        crown_h = TOOTH_TYPES[kind][1]
        if i in implant_slots:
            system, design = _system_design(pool, rng, TOOTH_TYPES[kind][0] - 1.0)
            crest = occ + sign * (gap + crown_h + rng.uniform(1.0, 2.5))
            bone_xy, tilt = (cx_mm / p, crest / p), rng.uniform(-10.0, 10.0)
            if not implant_clearance_ok(builder, design, bone_xy, tilt, not lower):
                tilt = 0.0
            if implant_clearance_ok(builder, design, bone_xy, tilt, not lower):
                top = builder.add_implant(design, system.name, bone_xy, tilt, not lower)
                _superstructure(builder, rng, kind, top, design.diameter_mm, tilt, not lower)
        elif rng.random() > 0.12:
            tooth = make_tooth(kind, p, rng)
            cej = occ + sign * (gap + crown_h)
            builder.add_tooth(tooth, (cx_mm / p, cej / p), tilt, not lower)
    yy = (np.arange(rows, dtype=np.float32) * p)[:, None]
    xx = (np.arange(cols, dtype=np.float32) * p)[None, :]
    occ_row = occlusal(xx)
    u = (xx - mid) / (0.5 * width_mm)
    trab = trabecular_bone(rng, (rows, cols), p)
    texture = 5.0 + 2.2 * trab + 0.6 * smooth_noise(rng, (rows, cols), 8.0 / p)
    lower_crest = occ_row + gap + 9.0 + 0.8 * smooth_noise(rng, (1, cols), 5.0 / p)[0][None, :]
    border = height_mm * 0.93 - 0.10 * height_mm * u ** 2
    def step(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(np.clip(-v, -50.0, 50.0)))

    ramus = step((np.abs(u) - 0.80) / 0.02) * step((yy - 0.15 * height_mm - 8.0 * (1.0 - np.abs(u))) / 2.0)
    mandible = np.clip((1.0 / (1.0 + np.exp(np.clip(-(yy - lower_crest) / 0.4, -50, 50)))) + ramus, 0.0, 1.0)
    mandible = mandible / (1.0 + np.exp((yy - border) / 0.5))
    upper_crest = occ_row - gap - 9.0 + 0.8 * smooth_noise(rng, (1, cols), 5.0 / p)[0][None, :]
    maxilla = step((upper_crest - yy) / 0.4) * step((yy - 0.10 * height_mm) / 3.0) * step((0.78 - np.abs(u)) / 0.03)
    bone = texture * np.clip(mandible + maxilla, 0.0, 1.0)
    bone += 6.0 * np.exp(-((yy - border + 1.8) / 1.4) ** 2) * step((0.9 - np.abs(u)) / 0.03)  # lower-border cortex
    palate = upper_crest - rng.uniform(16.0, 20.0)
    bone += 3.0 * np.exp(-((yy - palate) / 1.0) ** 2) * step((0.55 - np.abs(u)) / 0.05)
    for side in (-1.0, 1.0):  # maxillary sinuses above the molars
        sx, sy = mid + side * 0.26 * width_mm, upper_crest - rng.uniform(12.0, 15.0)
        ell = ((xx - sx) / (0.11 * width_mm)) ** 2 + ((yy - sy) / 11.0) ** 2
        bone = bone * (1.0 - 0.7 * np.clip(1.2 - ell, 0.0, 1.0)) + 2.0 * np.exp(-((ell - 1.0) / 0.05) ** 2)
    builder.materials["bone"] = builder.sockets(np.clip(bone, 0.0, None).astype(np.float32))
    soft = 22.0 + 4.0 * smooth_noise(rng, (rows, cols), 30.0 / p) - 8.0 * np.exp(-((yy - palate - 4.0) / 2.5) ** 2)
    builder.materials["soft"] = np.clip(soft, 2.0, None).astype(np.float32)
    params = DetectorParams(photons=rng.uniform(3000, 6000), psf_sigma_px=rng.uniform(1.0, 1.6),
                            electronic_sigma=rng.uniform(3.0, 8.0), burnout_attenuation=0.3,
                            bloom_sigma_px=0.4 / p, bloom_gain=rng.uniform(0.1, 0.25), gamma=rng.uniform(0.9, 1.2))
    image = _physics(builder, params, rng)
    return RadiographScene(image=image, kind="panoramic", seed=int(seed), pixel_mm=p, implants=builder.implants)
