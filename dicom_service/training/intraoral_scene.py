"""Static scene canvases for synthetic intraoral-camera clips (numpy + OpenCV only).

A scene is drawn once, larger than the video frame, and the camera of
:mod:`dicom_service.training.video_phantoms` moves over it. It holds:

* a mucosa / tongue background (dark red, low-frequency shading, vessel-like lines);
* 0 to 2 rows of teeth (incisor, canine, premolar and molar-like crowns) with a warm
  off-white enamel colour per tooth, rounded shading, fine texture, darker
  interproximal gaps, a few stains and cracks, and a pink gingiva band with papillae
  along the cervical line;
* specular highlights (small saturated white blobs) and saliva droplets (bright
  semi-transparent blobs with dark rims), both part of the clean image and static with
  respect to the scene;
* optionally a metallic instrument in its own layer (:class:`InstrumentLayer`), which
  the clip renderer moves with its own affine motion.

All images are RGB, ``uint8``, indexed ``[row, column]``; polygon vertices are
``(x, y)`` = ``(column, row)`` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Crown width as a fraction of crown height, per tooth kind.
_WIDTH_RATIO = {"incisor": 0.62, "canine": 0.58, "premolar": 0.62, "molar": 0.9}
_ARCH = ("incisor", "incisor", "canine", "premolar", "premolar", "molar", "molar", "molar")


@dataclass(frozen=True)
class InstrumentLayer:
    """A metallic instrument drawn in frame coordinates at its reference pose.

    Attributes
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 RGB colour of the instrument (frame size).
    alpha : np.ndarray
        ``(H, W)`` float32 coverage in ``[0, 1]``.
    pivot : tuple of float
        ``(x, y)`` point the instrument rotates about (where the hand holds it).
    """

    rgb: np.ndarray
    alpha: np.ndarray
    pivot: tuple[float, float]


@dataclass(frozen=True)
class IntraoralScene:
    """A static scene canvas.

    Attributes
    ----------
    canvas : np.ndarray
        ``(Hc, Wc, 3)`` uint8 RGB clean colour.
    teeth : np.ndarray
        ``(Hc, Wc)`` bool, True on visible tooth crowns.
    instrument : InstrumentLayer or None
        The moving instrument layer (frame-sized), or None.
    """

    canvas: np.ndarray
    teeth: np.ndarray
    instrument: InstrumentLayer | None


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise of ``shape`` ``(rows, cols)``, float32.

    ``cells`` is the number of random control points along the longer side.
    """
    rows, cols = shape
    scale = max(rows, cols) / max(cells, 1.0)
    grid = rng.standard_normal((max(2, int(rows / scale) + 2), max(2, int(cols / scale) + 2))).astype(np.float32)
    out = cv2.resize(grid, (cols, rows), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / (out.std() + 1e-6)


def _blend(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | tuple[float, ...], alpha: float) -> None:
    """In place: ``img = img * (1 - alpha * mask) + colour * alpha * mask`` for float32 ``img``."""
    a = (alpha * mask)[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def _background(rng: np.random.Generator, shape: tuple[int, int], grain: float = 1.0) -> np.ndarray:
    """Mucosa / tongue: ``(rows, cols, 3)`` float32 RGB in [0, 255]; ``grain`` scales the per-pixel texture."""
    rows, cols = shape
    base = np.array([rng.uniform(125, 165), rng.uniform(30, 60), rng.uniform(40, 65)], np.float32)
    shade = 1.0 + 0.18 * smooth_noise(rng, shape, 5) + 0.06 * smooth_noise(rng, shape, 25)
    img = base * shade[..., None]
    if rng.random() < 0.6:  # tongue: a large pinker ellipse with papillae texture
        tongue = np.zeros(shape, np.float32)
        centre = (int(cols * rng.uniform(0.3, 0.7)), int(rows * rng.uniform(0.75, 1.0)))
        axes = (int(cols * rng.uniform(0.3, 0.5)), int(rows * rng.uniform(0.3, 0.5)))
        cv2.ellipse(tongue, centre, axes, float(rng.uniform(-15, 15)), 0, 360, 1.0, -1)
        tongue = cv2.GaussianBlur(tongue, (0, 0), 6)
        papillae = 1.0 + 0.08 * grain * rng.standard_normal(shape).astype(np.float32)
        colour = np.array([rng.uniform(170, 200), rng.uniform(75, 100), rng.uniform(85, 110)], np.float32)
        _blend(img, tongue, colour[None, None, :] * papillae[..., None] * shade[..., None], 1.0)
    vessels = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(6, 16))):
        pts = [np.array([rng.uniform(0, cols), rng.uniform(0, rows)])]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(8, 25))):
            heading += rng.normal(0, 0.35)
            pts.append(pts[-1] + rng.uniform(4, 10) * np.array([math.cos(heading), math.sin(heading)]))
        cv2.polylines(vessels, [np.round(np.array(pts)).astype(np.int32)], False, float(rng.uniform(0.3, 0.8)),
                      1, cv2.LINE_AA)
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.7)
    _blend(img, vessels, (95, 10, 25), 0.8)
    img += grain * rng.normal(0, 2.5, img.shape).astype(np.float32)
    return img


def _crown_polygon(kind: str, height: float, direction: int, rng: np.random.Generator) -> np.ndarray:
    """Crown outline around the origin at the cervical centre: ``(n, 2)`` float (x, y).

    The crown extends ``height`` pixels in ``direction`` (+1: down, -1: up) and
    ``0.2 * height`` the other way (hidden under the gingiva).
    """
    width = _WIDTH_RATIO[kind] * height * rng.uniform(0.9, 1.1)
    power = {"incisor": 3.5, "canine": 2.4, "premolar": 2.8, "molar": 3.2}[kind]
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** (2 / power)
    y = np.sign(s) * np.abs(s) ** (2 / power)
    v = (y + 1) / 2  # 0 at the cervical end, 1 at the incisal / occlusal end
    taper = 1.0 - 0.18 * (1 - v) if kind != "canine" else 1.0 - 0.35 * v ** 2
    xs = 0.5 * width * x * taper
    ys = (-0.2 + 1.2 * v) * height * direction
    return np.stack([xs, ys], axis=1)


def _tooth_colour(img: np.ndarray, ids: np.ndarray, tooth_id: int, box: tuple[int, int, int, int],
                  cervical_y: float, height: float, direction: int, rng: np.random.Generator,
                  grain: float = 1.0) -> None:
    """Shade one crown in place: base colour, rounded shading, texture (scaled by ``grain``), incisal translucency."""
    x0, y0, x1, y1 = box
    sub = ids[y0:y1, x0:x1] == tooth_id
    if not sub.any():
        return
    dist = cv2.distanceTransform(sub.astype(np.uint8), cv2.DIST_L2, 3)
    rounded = np.clip(dist / (0.22 * height), 0, 1) ** 0.6
    shape = sub.shape
    base = np.array([rng.uniform(222, 245), rng.uniform(210, 232), rng.uniform(180, 210)], np.float32)
    shade = (0.62 + 0.38 * rounded) * (1 + 0.06 * smooth_noise(rng, shape, 3))
    texture = grain * cv2.GaussianBlur(rng.normal(0, 4.0, shape).astype(np.float32), (0, 0), 0.8)
    colour = base * shade[..., None] + texture[..., None]
    rows = np.arange(y0, y1, dtype=np.float32)[:, None]
    v = np.clip((rows - cervical_y) * direction / height, 0, 1)
    incisal = np.clip((v - 0.8) / 0.2, 0, 1) * rng.uniform(0.2, 0.5)
    _blend(colour, np.broadcast_to(incisal, shape).astype(np.float32), (175, 180, 182), 1.0)
    cervical = np.clip(1 - v / 0.25, 0, 1) * 0.25
    _blend(colour, np.broadcast_to(cervical, shape).astype(np.float32), (215, 185, 130), 1.0)
    if rng.random() < 0.3:  # stain
        stain = np.zeros(shape, np.float32)
        cy, cx = int(rng.uniform(0.2, 0.8) * shape[0]), int(rng.uniform(0.2, 0.8) * shape[1])
        cv2.ellipse(stain, (cx, cy), (int(rng.integers(2, 7)), int(rng.integers(2, 6))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        _blend(colour, cv2.GaussianBlur(stain, (0, 0), 1.5), (150, 110, 60), float(rng.uniform(0.3, 0.6)))
    if rng.random() < 0.2:  # crack
        crack = np.zeros(shape, np.float32)
        pts = np.cumsum(rng.normal(0, 3, (6, 2)), axis=0) + [shape[1] / 2, shape[0] / 2]
        cv2.polylines(crack, [np.round(pts).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA)
        _blend(colour, crack, (120, 105, 90), 0.5)
    region = img[y0:y1, x0:x1]
    region[sub] = colour[sub]


def _teeth_rows(img: np.ndarray, rng: np.random.Generator, grain: float = 1.0) -> np.ndarray:
    """Draw 1-2 rows of teeth with gingiva into float ``img`` in place; return the tooth mask.

    ``grain`` scales the per-pixel enamel and gingiva texture (see :func:`render_scene`).
    """
    rows, cols = img.shape[:2]
    ids = np.zeros((rows, cols), np.int32)
    n_rows = 1 if rng.random() < 0.5 else 2
    gums = np.zeros((rows, cols), np.float32)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    next_id = 1
    specs = [(-1, rng.uniform(0.55, 0.75))] if n_rows == 1 and rng.random() < 0.5 else \
        [(1, rng.uniform(0.25, 0.45))] if n_rows == 1 else \
        [(1, rng.uniform(0.08, 0.18)), (-1, rng.uniform(0.82, 0.92))]
    for direction, cerv_frac in specs:
        height = rows * (rng.uniform(0.28, 0.38) if n_rows == 1 else rng.uniform(0.26, 0.33))
        curve = rng.uniform(-1.2, 1.2) * rows / cols ** 2 * 0.4
        y_cerv = rows * cerv_frac
        margin = np.full(cols, np.nan, np.float32)
        start = int(rng.integers(0, len(_ARCH)))
        x = rng.uniform(-0.3, 0.05) * height
        k = start
        while x < cols + 0.3 * height:
            kind = _ARCH[min(abs(k), len(_ARCH) - 1)]
            k += 1 if rng.random() < 0.8 else 0
            poly = _crown_polygon(kind, height * rng.uniform(0.9, 1.05), direction, rng)
            half = float(poly[:, 0].max())
            cx = x + half
            cy = y_cerv + curve * (cx - cols / 2) ** 2
            tilt = math.radians(rng.normal(0, 4))
            rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
            pts = poly @ rot.T + [cx, cy]
            cv2.fillPoly(ids, [np.round(pts).astype(np.int32)], next_id, cv2.LINE_8)
            x0, x1 = max(0, int(pts[:, 0].min()) - 1), min(cols, int(pts[:, 0].max()) + 2)
            y0, y1 = max(0, int(pts[:, 1].min()) - 1), min(rows, int(pts[:, 1].max()) + 2)
            if x1 > x0 and y1 > y0:
                _tooth_colour(img, ids, next_id, (x0, y0, x1, y1), cy, height, direction, rng, grain)
            lo, hi = max(0, int(cx - half)), min(cols, int(cx + half) + 1)
            if hi > lo:  # gingival margin: at the cervical line mid-tooth, papillae between teeth
                u = (np.arange(lo, hi) - (cx - half)) / (2 * half)
                margin[lo:hi] = cy + direction * 0.16 * height * (1 - np.sin(np.pi * np.clip(u, 0, 1)) ** 0.7)
            next_id += 1
            x += 2 * half + rng.uniform(0.5, 3.5)
        margin = np.where(np.isnan(margin), y_cerv, margin)
        band = rows * rng.uniform(0.12, 0.25)
        depth = (margin[None, :] - yy) * direction  # > 0 on the gingiva side of the margin
        cervical = y_cerv + curve * (np.arange(cols, dtype=np.float32) - cols / 2) ** 2
        outer = (cervical[None, :] - yy) * direction  # mucogingival line: smooth, not scalloped
        wobble = 4 * smooth_noise(rng, (rows, cols), 6)
        gums = np.maximum(gums, ((depth > 0) & (outer < band + wobble)).astype(np.float32))
        # dark oral cavity beyond the crowns (between the arches)
        far = np.clip(((yy - cervical[None, :]) * direction - 1.1 * height) / (0.2 * height), 0, 1)
        _blend(img, far * (ids == 0), (25, 5, 8), float(rng.uniform(0.4, 0.65)))
    teeth = ids > 0
    gap = (cv2.dilate(teeth.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & (cv2.erode(
        teeth.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0)
    img[gap] *= 0.6  # interproximal gaps and crown outlines
    gums = cv2.GaussianBlur(gums, (0, 0), 1.0)
    gum_colour = np.array([rng.uniform(200, 228), rng.uniform(105, 140), rng.uniform(115, 150)], np.float32)
    gum_shade = 1 + 0.07 * smooth_noise(rng, (rows, cols), 12) + 0.03 * grain * rng.standard_normal((rows, cols))
    _blend(img, gums, gum_colour * gum_shade[..., None].astype(np.float32), 1.0)
    return teeth & (gums < 0.5)


def _highlights(img: np.ndarray, where: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Small saturated white specular blobs at random points of ``where`` (bool mask)."""
    ys, xs = np.nonzero(where)
    if len(ys) == 0:
        return
    spots = np.zeros(where.shape, np.float32)
    for i in rng.integers(0, len(ys), count):
        axes = (int(rng.integers(1, 5)), int(rng.integers(1, 3)))
        cv2.ellipse(spots, (int(xs[i]), int(ys[i])), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    spots = np.clip(cv2.GaussianBlur(spots, (0, 0), 0.8) * 1.6, 0, 1)
    _blend(img, spots, (255, 255, 255), 1.0)


def _droplets(img: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Saliva droplets: bright semi-transparent discs with a dark rim and a tiny glint."""
    rows, cols = img.shape[:2]
    for _ in range(count):
        c = (int(rng.integers(0, cols)), int(rng.integers(0, rows)))
        r = int(rng.integers(2, 7))
        body, rim, glint = (np.zeros((rows, cols), np.float32) for _ in range(3))
        cv2.circle(body, c, r, 1.0, -1, cv2.LINE_AA)
        cv2.circle(rim, c, r, 1.0, 1, cv2.LINE_AA)
        cv2.circle(glint, (c[0] - r // 3, c[1] - r // 3), max(1, r // 3), 1.0, -1, cv2.LINE_AA)
        _blend(img, body, (255, 250, 245), float(rng.uniform(0.15, 0.35)))
        _blend(img, rim, (40, 15, 15), float(rng.uniform(0.3, 0.55)))
        _blend(img, glint, (255, 255, 255), 0.9)


def _instrument(frame_shape: tuple[int, int], rng: np.random.Generator, grain: float = 1.0) -> InstrumentLayer:
    """A grey elongated probe / mirror entering from a frame border (``grain`` scales its pixel noise)."""
    rows, cols = frame_shape
    side = int(rng.integers(4))
    entry = [(rng.uniform(0.2, 0.8) * cols, -10.0), (cols + 10.0, rng.uniform(0.2, 0.8) * rows),
             (rng.uniform(0.2, 0.8) * cols, rows + 10.0), (-10.0, rng.uniform(0.2, 0.8) * rows)][side]
    tip = np.array([rng.uniform(0.3, 0.7) * cols, rng.uniform(0.3, 0.7) * rows])
    start = np.array(entry)
    axis = tip - start
    length = float(np.linalg.norm(axis))
    unit = axis / max(length, 1e-6)
    normal = np.array([-unit[1], unit[0]])
    width = rng.uniform(5, 11)
    pts = np.array([start + normal * width, tip + normal * width * 0.4, tip - normal * width * 0.4,
                    start - normal * width])
    cover = np.zeros(frame_shape, np.float32)
    cv2.fillPoly(cover, [np.round(pts).astype(np.int32)], 1.0, cv2.LINE_AA)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    across = ((xx - start[0]) * normal[0] + (yy - start[1]) * normal[1]) / width  # -1..1 over the shaft
    grey = rng.uniform(120, 170)
    value = grey + 70 * np.cos(np.clip(across, -1.5, 1.5) * 1.2) + 90 * np.exp(-((across - 0.35) / 0.15) ** 2)
    if rng.random() < 0.5:  # mouth mirror head
        r = int(rng.uniform(18, 32))
        head = np.zeros(frame_shape, np.float32)
        cv2.circle(head, (int(tip[0]), int(tip[1])), r, 1.0, -1, cv2.LINE_AA)
        d = np.hypot(xx - tip[0], yy - tip[1]) / r
        value = np.where(head > 0, 70 + 60 * d + 110 * (np.abs(d - 0.93) < 0.07), value)
        cover = np.maximum(cover, head)
    tint = np.array([0.97, 1.0, 1.04], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    rgb = np.clip(value[..., None] * tint + grain * rng.normal(0, 2, (rows, cols, 3)), 0, 255).astype(np.uint8)
    return InstrumentLayer(rgb=rgb, alpha=cover.clip(0, 1), pivot=(float(start[0]), float(start[1])))


def render_scene(rng: np.random.Generator, canvas_shape: tuple[int, int], frame_shape: tuple[int, int], *,
                 teeth: bool | None = None, instrument: bool | None = None, grain: float = 1.0) -> IntraoralScene:
    """Draw a static intraoral scene.

    Parameters
    ----------
    rng : np.random.Generator
        Source of every random choice (the scene is deterministic given its state).
    canvas_shape : tuple of int
        ``(rows, cols)`` of the scene canvas (larger than the frame so the camera can move).
    frame_shape : tuple of int
        ``(rows, cols)`` of the video frame (the instrument layer has this size).
    teeth : bool, optional
        Force teeth on or off; by default 90% of scenes have teeth.
    instrument : bool, optional
        Force an instrument on or off; by default 30% of scenes have one.
    grain : float
        Scale of the per-pixel (white-noise) texture: mucosa grain, tongue papillae,
        enamel texture, gingiva stipple and instrument noise. 1 is the phantom data set;
        0 draws the same random numbers but leaves the grain out, so every other pixel of
        the scene is unchanged (the grain-free reference of ``eval video``).

    Returns
    -------
    IntraoralScene
        ``canvas`` ``(rows, cols, 3)`` uint8 RGB, ``teeth`` ``(rows, cols)`` bool, ``instrument``.
    """
    if min(canvas_shape) < 32 or min(frame_shape) < 16:
        raise ValueError(f"canvas {canvas_shape} / frame {frame_shape} too small (>= 32 / >= 16 pixels)")
    has_teeth = bool(rng.random() >= 0.1) if teeth is None else bool(teeth)
    has_instrument = bool(rng.random() < 0.3) if instrument is None else bool(instrument)
    img = _background(rng, canvas_shape, grain)
    mask = _teeth_rows(img, rng, grain) if has_teeth else np.zeros(canvas_shape, bool)
    if has_teeth:
        _highlights(img, cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0,
                    int(rng.integers(8, 30)), rng)
    _highlights(img, ~mask, int(rng.integers(2, 10)), rng)
    _droplets(img, int(rng.integers(0, 9)), rng)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    layer = _instrument(frame_shape, rng, grain) if has_instrument else None
    return IntraoralScene(canvas=canvas, teeth=mask, instrument=layer)
