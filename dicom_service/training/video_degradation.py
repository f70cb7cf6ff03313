"""Camera degradations that turn a clean intraoral frame into a low-quality one.

The chain (optics, then sensor, then codec) per frame is: defocus (disc kernel), motion
blur (a line kernel along the frame's actual motion, its length the motion magnitude
times an exposure fraction), specular glare (blooming around saturated highlights and a
few extra bright spots), colour cast (per-channel gains), low light (scene gain
0.35-0.8 with a gamma, partly compensated by the camera's auto-exposure), Poisson-Gaussian
sensor noise (stronger in low light because the auto-exposure gain amplifies it) and
JPEG compression at quality 30-70 (a stand-in for H.264 artefacts).

Parameters are drawn once per clip (:func:`sample_params`) and jittered mildly per
frame inside :func:`degrade_frame`. Images are ``(rows, cols, 3)`` uint8 RGB; motion
vectors are ``(dx, dy)`` = ``(column, row)`` pixels per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DegradationParams:
    """Per-clip degradation parameters.

    Attributes
    ----------
    exposure : float
        Fraction of the frame interval the shutter is open (motion-blur length = exposure x motion).
    defocus : float
        Defocus disc radius in pixels (0: sharp).
    light : float
        Scene illumination gain in ``[0.35, 0.8]``.
    gamma : float
        Low-light tone curve exponent applied to ``[0, 1]`` intensities.
    compensation : float
        Share in ``[0, 1]`` of the lost brightness the auto-exposure gives back.
    cast : tuple of float
        ``(r, g, b)`` channel gains.
    shot : float
        Poisson (signal-dependent) noise variance factor, on ``[0, 1]`` intensities.
    read : float
        Gaussian read-noise standard deviation, on ``[0, 1]`` intensities.
    glare : float
        Bloom strength around saturated highlights (0: none).
    glare_spots : int
        Extra bright blooming spots per frame.
    quality : int
        JPEG quality (30-70).
    """

    exposure: float
    defocus: float
    light: float
    gamma: float
    compensation: float
    cast: tuple[float, float, float]
    shot: float
    read: float
    glare: float
    glare_spots: int
    quality: int


def sample_params(rng: np.random.Generator) -> DegradationParams:
    """Draw one clip's degradation parameters from ``rng``."""
    return DegradationParams(
        exposure=float(rng.uniform(0.3, 1.0)),
        defocus=float(rng.uniform(0.6, 2.2)) if rng.random() < 0.6 else 0.0,
        light=float(rng.uniform(0.35, 0.8)),
        gamma=float(rng.uniform(1.0, 1.2)),
        compensation=float(rng.uniform(0.7, 0.95)),
        cast=(float(rng.uniform(0.94, 1.1)), float(rng.uniform(0.94, 1.04)), float(rng.uniform(0.88, 1.06))),
        shot=float(rng.uniform(0.001, 0.005)),
        read=float(rng.uniform(0.003, 0.01)),
        glare=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.7 else 0.0,
        glare_spots=int(rng.integers(0, 3)),
        quality=int(rng.integers(30, 71)),
    )


def line_kernel(motion: tuple[float, float], length: float) -> np.ndarray | None:
    """Normalised linear motion-blur kernel along ``motion`` ``(dx, dy)``; None if under 1 pixel.

    Returns a square float32 kernel of odd size, drawn antialiased at 4x and averaged down.
    """
    norm = math.hypot(*motion)
    if length < 1.0 or norm < 1e-6:
        return None
    size = 2 * int(math.ceil(length / 2)) + 1
    up = 4
    canvas = np.zeros((size * up, size * up), np.uint8)
    c = (size * up - 1) / 2
    ux, uy = motion[0] / norm, motion[1] / norm
    half = length * up / 2
    p0 = (int(round(c - ux * half)), int(round(c - uy * half)))
    p1 = (int(round(c + ux * half)), int(round(c + uy * half)))
    cv2.line(canvas, p0, p1, 255, up, cv2.LINE_AA)
    kernel = cv2.resize(canvas.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def disc_kernel(radius: float) -> np.ndarray | None:
    """Normalised defocus disc of ``radius`` pixels with a soft one-pixel edge; None under 0.5."""
    if radius < 0.5:
        return None
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    kernel = np.clip(radius + 0.5 - np.hypot(xx, yy), 0, 1)
    return kernel / kernel.sum()


def _glare(img: np.ndarray, clean: np.ndarray, params: DegradationParams, rng: np.random.Generator) -> np.ndarray:
    """Add blooming around saturated pixels of ``clean`` and a few random bright spots (float [0, 1])."""
    if params.glare <= 0 and params.glare_spots == 0:
        return img
    rows, cols = img.shape[:2]
    source = (clean.min(axis=2) >= 250).astype(np.float32)
    for _ in range(int(rng.poisson(params.glare_spots))):
        cv2.circle(source, (int(rng.integers(cols)), int(rng.integers(rows))), int(rng.integers(2, 6)), 1.0, -1)
    sigma = float(rng.uniform(2.5, 6.0))
    bloom = cv2.GaussianBlur(source, (0, 0), sigma) * (params.glare + 0.3) * sigma * 0.6
    return img + np.clip(bloom, 0, 1.5)[..., None] * np.array([1.0, 0.98, 0.95], np.float32)


def degrade_frame(clean: np.ndarray, motion: tuple[float, float], params: DegradationParams,
                  rng: np.random.Generator) -> np.ndarray:
    """Degrade one clean frame.

    Parameters
    ----------
    clean : np.ndarray
        ``(rows, cols, 3)`` uint8 RGB.
    motion : tuple of float
        ``(dx, dy)`` image motion of this frame, in pixels per frame interval.
    params : DegradationParams
        The clip's parameters; each is jittered mildly here (per-frame variation).
    rng : np.random.Generator
        Noise and jitter source.

    Returns
    -------
    np.ndarray
        ``(rows, cols, 3)`` uint8 RGB degraded frame.
    """
    if clean.ndim != 3 or clean.shape[2] != 3 or clean.dtype != np.uint8:
        raise ValueError(f"clean must be (rows, cols, 3) uint8, got {clean.shape} {clean.dtype}")
    img = clean.astype(np.float32) / 255.0
    disc = disc_kernel(params.defocus * float(rng.uniform(0.85, 1.15)))
    if disc is not None:
        img = cv2.filter2D(img, -1, disc, borderType=cv2.BORDER_REFLECT)
    line = line_kernel(motion, params.exposure * math.hypot(*motion) * float(rng.uniform(0.9, 1.1)))
    if line is not None:
        img = cv2.filter2D(img, -1, line, borderType=cv2.BORDER_REFLECT)
    img = _glare(img, clean, params, rng)
    cast = np.asarray(params.cast, np.float32) * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    light = params.light * float(rng.uniform(0.95, 1.05))
    raw = light * np.clip(img * cast, 0, None) ** params.gamma  # photons reaching the sensor
    var = params.shot * raw + params.read ** 2
    raw = raw + np.sqrt(var) * rng.standard_normal(raw.shape).astype(np.float32)
    gain = (1.0 / light) ** params.compensation  # auto-exposure: amplifies the noise too
    out = np.clip(raw * gain * 255.0 + 0.5, 0, 255).astype(np.uint8)
    quality = int(np.clip(params.quality + rng.integers(-4, 5), 20, 95))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def degrade_clip(clean: np.ndarray, motions: np.ndarray, rng: np.random.Generator,
                 params: DegradationParams | None = None) -> np.ndarray:
    """Degrade a clip: ``clean`` ``(T, rows, cols, 3)`` uint8, ``motions`` ``(T, 2)`` ``(dx, dy)``.

    ``params`` are drawn from ``rng`` when not given. Returns ``(T, rows, cols, 3)`` uint8.
    """
    if clean.ndim != 4 or motions.shape != (clean.shape[0], 2):
        raise ValueError(f"clean must be (T, rows, cols, 3) and motions (T, 2), got {clean.shape}, {motions.shape}")
    params = sample_params(rng) if params is None else params
    frames = [degrade_frame(f, (float(m[0]), float(m[1])), params, rng) for f, m in zip(clean, motions, strict=True)]
    return np.stack(frames)

