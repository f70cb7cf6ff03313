"""Pixel phantoms behind :mod:`tests.builders` (deterministic for a seed, no patient data).

Radiograph phantoms are ``(rows, columns)`` float32 radiopacity in ``[0, 1]`` (1 = metal);
boxes are ``(x0, y0, x1, y1)``, x = column, y = row, exclusive ends.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

Box = tuple[float, float, float, float]
_SUBPIXEL_SHIFT = 4
_SCALE = float(1 << _SUBPIXEL_SHIFT)
_MAX_TRIES = 500


def _texture(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise, ``shape`` float32, zero mean and unit std; ``cell`` = feature size in px."""
    small = (max(2, int(round(shape[0] / cell)) + 2), max(2, int(round(shape[1] / cell)) + 2))
    noise = rng.standard_normal(small, dtype=np.float32)
    out = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / (out.std() + 1e-6)


def _fill(mask: np.ndarray, points: np.ndarray) -> None:
    """Fill polygon ``points`` ``(N, 2)`` float (x, y) into the uint8 ``mask`` with subpixel accuracy."""
    pts = np.rint(points * _SCALE).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)


def _implant_outline(length: float, width: float, angle_deg: float, cx: float, cy: float) -> np.ndarray:
    """Outline of a threaded, tapered screw implant; coronal end at local y = -length/2.

    Returns ``(N, 2)`` float (x, y) image coordinates, rotated by ``angle_deg``
    (positive = clockwise on screen) about the centre ``(cx, cy)``.
    """
    y = np.arange(0.0, length + 0.25, 0.5)
    t = y / length
    pitch = length / 14.0
    tri = 1.0 - np.abs(2.0 * np.mod(y / pitch, 1.0) - 1.0)
    core = width * (0.36 - 0.08 * t)
    half = np.where(t < 0.1, 0.5 * width, core + 0.14 * width * tri)
    apex = t > 0.9
    half[apex] = np.maximum(half[apex] * np.sqrt(np.clip(1.0 - ((t[apex] - 0.9) / 0.1) ** 2, 0.0, 1.0)),
                            0.12 * width)
    local = np.concatenate([np.stack([half, y], 1), np.stack([-half[::-1], y[::-1]], 1)])
    local[:, 1] -= length / 2.0
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return local @ rot.T + np.array([cx, cy])


def _bounds(points: np.ndarray) -> Box:
    return (float(points[:, 0].min()), float(points[:, 1].min()),
            float(points[:, 0].max()), float(points[:, 1].max()))


def _disjoint(a: Box, b: Box, margin: float) -> bool:
    return a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1]


def _inside(box: Box, rows: int, cols: int, margin: float) -> bool:
    return box[0] >= margin and box[1] >= margin and box[2] <= cols - margin and box[3] <= rows - margin


def _draw_implants(image: np.ndarray, outlines: list[np.ndarray], rng: np.random.Generator) -> list[Box]:
    """Paint implants (radiopacity ~0.96) into ``image`` in place; return true boxes."""
    boxes: list[Box] = []
    for outline in outlines:
        mask = np.zeros(image.shape, np.uint8)
        _fill(mask, outline)
        ys, xs = np.nonzero(mask)
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
        metal = 0.955 + 0.01 * rng.standard_normal(image.shape, dtype=np.float32)
        image[mask > 0] = metal[mask > 0]
    return boxes


def _tooth(mask_dentin: np.ndarray, mask_enamel: np.ndarray, cx: float, crown_y: float,
           width: float, crown_h: float, root_len: float, down: bool) -> None:
    """Draw one tooth: crown ellipse at ``crown_y``, root towards +y if ``down``."""
    sign = 1.0 if down else -1.0
    centre = (int(round(cx)), int(round(crown_y)))
    cv2.ellipse(mask_dentin, centre, (int(width / 2), int(crown_h / 2)), 0, 0, 360, 1, -1)
    cv2.ellipse(mask_enamel, (centre[0], int(round(crown_y - sign * crown_h * 0.12))),
                (int(width / 2 * 0.92), int(crown_h / 2 * 0.8)), 0, 0, 360, 1, -1)
    root = np.array([[cx - width * 0.42, crown_y], [cx + width * 0.42, crown_y],
                     [cx + width * 0.12, crown_y + sign * root_len],
                     [cx - width * 0.12, crown_y + sign * root_len]])
    _fill(mask_dentin, root)


def _finish(image: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    out = cv2.GaussianBlur(image, (0, 0), blur)
    out += noise * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _bone(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Trabecular-looking bone texture around 0.32 radiopacity."""
    ridges = np.exp(-(_texture(rng, shape, 4.0 * scale) ** 2) / 0.08)
    return (0.30 + 0.05 * _texture(rng, shape, 2.5 * scale) + 0.05 * _texture(rng, shape, 20.0 * scale)
            + 0.07 * ridges).astype(np.float32)


def intraoral_phantom(rows: int, cols: int, implants: int, seed: int) -> tuple[np.ndarray, list[Box]]:
    """Periapical-like phantom: bone, two or three teeth, ``implants`` screw implants."""
    if not 0 <= implants <= 3:
        raise ValueError(f"implants must be in [0, 3], got {implants}")
    if rows < 64 or cols < 64:
        raise ValueError(f"phantom needs at least 64x64 pixels, got {rows}x{cols}")
    rng = np.random.default_rng(seed)
    outlines: list[np.ndarray] = []
    for _ in range(_MAX_TRIES):
        outlines = []
        for k in range(implants):
            length = rows * rng.uniform(0.35, 0.50)
            width = rows * rng.uniform(0.08, 0.12)
            cx = cols * ((k + 1) / (implants + 1) + rng.uniform(-0.04, 0.04))
            outlines.append(_implant_outline(length, width, rng.uniform(-25, 25), cx,
                                             rows * rng.uniform(0.48, 0.58)))
        boxes = [_bounds(o) for o in outlines]
        if all(_inside(b, rows, cols, 3) for b in boxes) and all(
                _disjoint(boxes[i], boxes[j], 6) for i in range(len(boxes)) for j in range(i)):
            break
    else:
        raise ValueError(f"cannot place {implants} implants in {rows}x{cols}")
    scale = max(rows, cols) / 416.0
    image = _bone(rng, (rows, cols), scale)
    crest = rows * 0.30 + rows * 0.03 * _texture(rng, (1, cols), 60.0 * scale)[0]
    above = np.arange(rows, dtype=np.float32)[:, None] < crest[None, :]
    image[above] = 0.14 + 0.2 * (image[above] - 0.3)
    dentin = np.zeros((rows, cols), np.uint8)
    enamel = np.zeros((rows, cols), np.uint8)
    implant_x = [float(o[:, 0].mean()) for o in outlines]
    for j in range(4):
        cx = cols * (j + 0.5) / 4
        if all(abs(cx - ix) > cols * 0.16 for ix in implant_x):
            _tooth(dentin, enamel, cx + rng.uniform(-4, 4) * scale, rows * 0.22,
                   cols * rng.uniform(0.17, 0.21), rows * 0.2, rows * rng.uniform(0.4, 0.5), True)
    tooth = cv2.GaussianBlur(0.26 * dentin.astype(np.float32) + 0.16 * enamel, (0, 0), 1.5 * scale)
    image = np.maximum(image, 0.0) + tooth
    boxes = _draw_implants(image, outlines, rng)
    return _finish(image, rng, 0.8 * scale, 0.012), boxes


def panoramic_phantom(rows: int, cols: int, implants: int, seed: int) -> tuple[np.ndarray, list[Box]]:
    """Panoramic-like phantom: two arches of 14 teeth on a smile curve, ``implants`` implants."""
    n_slots = 14
    if not 0 <= implants <= 6:
        raise ValueError(f"implants must be in [0, 6], got {implants}")
    if rows < 200 or cols < 400:
        raise ValueError(f"panoramic phantom needs at least 200x400 pixels, got {rows}x{cols}")
    rng = np.random.default_rng(seed)
    slot_w = 0.76 * cols / n_slots

    def occlusal(x: np.ndarray | float) -> np.ndarray | float:
        u = (np.asarray(x) - cols / 2) / (0.4 * cols)
        return rows * (0.50 - 0.07 * u ** 2)

    chosen: list[tuple[int, bool]] = []
    outlines: list[np.ndarray] = []
    for _ in range(_MAX_TRIES):
        chosen, outlines = [], []
        slots = rng.permutation(n_slots)[:implants]
        for slot in slots:
            lower = bool(rng.integers(0, 2))
            cx = 0.12 * cols + (slot + 0.5) * slot_w
            length = rows * rng.uniform(0.24, 0.30)
            width = length * rng.uniform(0.22, 0.28)
            offset = 0.04 * rows + length / 2
            cy = float(occlusal(cx)) + (offset if lower else -offset)
            angle = rng.uniform(-15, 15) + (0.0 if lower else 180.0)
            chosen.append((int(slot), lower))
            outlines.append(_implant_outline(length, width, angle, cx, cy))
        boxes = [_bounds(o) for o in outlines]
        if all(_inside(b, rows, cols, 3) for b in boxes) and all(
                _disjoint(boxes[i], boxes[j], 8) for i in range(len(boxes)) for j in range(i)):
            break
    else:
        raise ValueError(f"cannot place {implants} implants in {rows}x{cols}")
    scale = rows / 1000.0 * 2.0
    image = (0.12 + 0.03 * _texture(rng, (rows, cols), 40 * scale)).astype(np.float32)
    yy = np.arange(rows, dtype=np.float32)[:, None]
    occ = occlusal(np.arange(cols, dtype=np.float32))[None, :]
    jaw = (yy > occ - 0.36 * rows) & (yy < occ + 0.40 * rows)
    image[jaw] = _bone(rng, (rows, cols), scale)[jaw]
    cortex = np.abs(yy - (occ + 0.40 * rows)) < 0.012 * rows
    palate = np.abs(yy - (occ - 0.36 * rows)) < 0.010 * rows
    image[cortex] += 0.22
    image[palate] += 0.14
    dentin = np.zeros((rows, cols), np.uint8)
    enamel = np.zeros((rows, cols), np.uint8)
    for slot in range(n_slots):
        cx = 0.12 * cols + (slot + 0.5) * slot_w
        for lower in (False, True):
            if (slot, lower) in chosen:
                continue
            sign = 1.0 if lower else -1.0
            crown_y = float(occlusal(cx)) + sign * 0.06 * rows
            _tooth(dentin, enamel, cx, crown_y, slot_w * 0.82, 0.11 * rows, 0.22 * rows, lower)
    tooth = cv2.GaussianBlur(0.26 * dentin.astype(np.float32) + 0.16 * enamel, (0, 0), 1.5 * scale)
    image = image + tooth
    boxes = _draw_implants(image, outlines, rng)
    return _finish(image, rng, 0.8 * scale, 0.012), boxes


def intraoral_scene(frames: int, rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Intraoral camera clip: ``(T, rows, cols, 3)`` uint8 RGB and ``(T, rows, cols)`` bool teeth."""
    if frames < 1 or rows < 16 or cols < 16:
        raise ValueError(f"need frames >= 1 and at least 16x16 pixels, got {frames}x{rows}x{cols}")
    rng = np.random.default_rng(seed)
    margin = max(8, min(rows, cols) // 24)
    h, w = rows + 2 * margin, cols + 2 * margin
    gum = np.array([205.0, 105.0, 115.0], np.float32)
    world = gum * (1.0 + 0.07 * _texture(rng, (h, w), 6.0)[..., None]
                   + 0.05 * _texture(rng, (h, w), 40.0)[..., None])
    cavity = np.arange(h)[:, None] > h * 0.80 + h * 0.03 * _texture(rng, (1, w), 80.0)[0][None, :]
    world[cavity] = np.array([95.0, 35.0, 45.0], np.float32)
    teeth = np.zeros((h, w), np.uint8)
    shade = np.zeros((h, w), np.float32)
    n_teeth = 5
    pitch = w / (n_teeth + 0.3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n_teeth):
        cx = pitch * (i + 0.65) + rng.uniform(-0.04, 0.04) * pitch
        cy = h * rng.uniform(0.50, 0.56)
        ax, ay = pitch * rng.uniform(0.40, 0.45), h * rng.uniform(0.26, 0.30)
        r = np.abs((xx - cx) / ax) ** 3.0 + np.abs((yy - cy) / ay) ** 2.4
        inside = r < 1.0
        teeth[inside] = 1
        shade[inside] = np.maximum(shade[inside], 1.0 - 0.25 * r[inside])
    enamel = np.array([238.0, 230.0, 212.0], np.float32)
    tooth_rgb = enamel * (0.80 + 0.2 * shade[..., None]) * (1.0 + 0.03 * _texture(rng, (h, w), 3.0)[..., None])
    gap = cv2.dilate(teeth, np.ones((7, 7), np.uint8)) > 0
    world[gap & (teeth == 0)] *= 0.6
    world[teeth > 0] = tooth_rgb[teeth > 0]
    world = cv2.GaussianBlur(np.clip(world, 0, 255), (0, 0), 1.0)
    out = np.empty((frames, rows, cols, 3), np.uint8)
    masks = np.empty((frames, rows, cols), bool)
    offset = np.zeros(2)
    # Sensor noise (sigma 3): random crops of a small bank of noise fields, because
    # drawing fresh Gaussian noise per frame dominates the run time of long clips.
    pad = 32
    bank = 3.0 * rng.standard_normal((min(frames, 4), rows + pad, cols + pad, 3), dtype=np.float32)
    for t in range(frames):
        if t > 0:
            offset = np.clip(0.5 * offset + rng.normal(0.0, 1.8, 2), -margin + 1, margin - 1)
        matrix = np.array([[1.0, 0.0, -margin - offset[0]], [0.0, 1.0, -margin - offset[1]]], np.float32)
        frame = cv2.warpAffine(world, matrix, (cols, rows), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        dy, dx = (int(v) for v in rng.integers(0, pad, 2))
        frame += bank[t % bank.shape[0], dy:dy + rows, dx:dx + cols]
        np.maximum(frame, 0.0, out=frame)
        out[t] = cv2.convertScaleAbs(frame)  # rounds and saturates to uint8
        masks[t] = cv2.warpAffine(teeth, matrix, (cols, rows), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_REFLECT) > 0
    return out, masks
