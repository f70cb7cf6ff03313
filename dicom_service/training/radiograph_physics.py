"""X-ray image formation for the synthetic radiographs: thickness maps to a 12-bit image.

The chain, each step a function below (arrays ``(rows, cols)``, indexed ``[row, column]``):

1. :func:`line_integral`: ``A = Σ_m μ_m t_m`` from per-material thickness maps
   (float32 mm) and effective linear attenuation coefficients (1/mm, ~60-70 kVp).
2. :func:`add_metal_bloom`: a wide, weak blur of the metal part of ``A`` added back,
   the halo that makes metal look larger than it is.
3. :func:`detect`: transmission ``I = I0 exp(-A)`` (expected quanta per pixel), detector
   blur (Gaussian PSF), quantum noise (Gaussian with variance = mean, i.e. Poisson for
   large counts), electronic noise, and saturation at the detector's full well, which
   burns out regions behind thin soft tissue.
4. :func:`display`: ``-log(I / I0)`` (radiopaque = bright), windowed so that the burn-out
   level is black and the densest anatomy (a high percentile of the non-metal line
   integral) reaches 70% grey; metal above that is compressed into the top 30% with an
   exponential knee (as a clinical look-up table does); a gamma; uint16 with 12 bits
   stored (0..4095).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

MU_PER_MM: dict[str, float] = {
    # effective linear attenuation coefficients (1/mm) for a ~65 kVp dental beam
    "soft": 0.020,
    "pulp": 0.020,
    "bone": 0.050,      # cortical-bone-equivalent thickness
    "dentine": 0.070,
    "enamel": 0.160,
    "composite": 0.090,
    "gutta_percha": 0.45,
    "titanium": 0.55,
    "crown": 0.16,      # ceramic (lithium disilicate / zirconia mix)
    "filling": 1.6,     # amalgam
}
METALS: frozenset[str] = frozenset({"titanium", "crown", "filling"})
BITS_STORED = 12


@dataclass(frozen=True)
class DetectorParams:
    """Acquisition and detector settings of one image (draw them per scene for variety).

    Attributes
    ----------
    photons : float
        Expected quanta per pixel without attenuation (``I0``).
    psf_sigma_px : float
        Standard deviation of the Gaussian detector PSF, pixels.
    electronic_sigma : float
        Electronic noise, in quanta.
    burnout_attenuation : float
        Line integral below which the detector saturates (full well = ``I0 exp(-this)``).
    bloom_sigma_px, bloom_gain : float
        Width (pixels) and strength of the metal bloom halo.
    gamma : float
        Display gamma applied to the windowed log image (1 = linear in attenuation).
    """

    photons: float = 3000.0
    psf_sigma_px: float = 0.8
    electronic_sigma: float = 4.0
    burnout_attenuation: float = 0.22
    bloom_sigma_px: float = 4.0
    bloom_gain: float = 0.25
    gamma: float = 0.9


def line_integral(thickness: Mapping[str, np.ndarray], mu: Mapping[str, float] | None = None) -> np.ndarray:
    """``Σ μ_m t_m`` over the materials of ``thickness``, float32 ``(rows, cols)`` (unitless).

    Raises ``ValueError`` for a material with no attenuation coefficient.
    """
    table = MU_PER_MM if mu is None else mu
    total: np.ndarray | None = None
    for name, t in thickness.items():
        if name not in table:
            raise ValueError(f"no attenuation coefficient for material {name!r}")
        term = np.float32(table[name]) * t.astype(np.float32, copy=False)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no material thickness maps given")
    return np.maximum(total, 0.0).astype(np.float32, copy=False)


def add_metal_bloom(attenuation: np.ndarray, metal_attenuation: np.ndarray, params: DetectorParams) -> np.ndarray:
    """``A + gain * blur(A_metal, sigma)``: float32 ``(rows, cols)``; ``A_metal`` is the metal share of ``A``."""
    if params.bloom_gain <= 0.0:
        return attenuation
    halo = cv2.GaussianBlur(metal_attenuation.astype(np.float32), (0, 0), params.bloom_sigma_px)
    return attenuation + np.float32(params.bloom_gain) * halo


def detect(attenuation: np.ndarray, params: DetectorParams, rng: np.random.Generator) -> np.ndarray:
    """Detected quanta per pixel: float32 ``(rows, cols)`` in ``[1, full well]``.

    ``I0 exp(-A)`` is blurred by the PSF, then gets quantum noise
    (``sqrt(I)`` standard deviation) and electronic noise, and is clipped at the full well
    ``I0 exp(-burnout_attenuation)``.
    """
    expected = np.float32(params.photons) * np.exp(-attenuation)
    if params.psf_sigma_px > 0:
        expected = cv2.GaussianBlur(expected, (0, 0), params.psf_sigma_px)
    noise = rng.standard_normal(expected.shape, dtype=np.float32)
    sigma = np.sqrt(expected + np.float32(params.electronic_sigma ** 2))
    counts = expected + noise * sigma
    full_well = np.float32(params.photons * np.exp(-params.burnout_attenuation))
    return np.clip(counts, 1.0, full_well)


def display(counts: np.ndarray, params: DetectorParams, anatomy_high: float) -> np.ndarray:
    """Log display mapping of detected quanta to a uint16 image with 12 bits stored.

    Parameters
    ----------
    counts : np.ndarray
        ``(rows, cols)`` float32 detected quanta (:func:`detect`).
    params : DetectorParams
    anatomy_high : float
        Line integral of the densest anatomy (no metal); it maps to 70% grey.

    Returns
    -------
    np.ndarray
        ``(rows, cols)`` uint16 in ``0..4095``: ``a = -log(counts / I0)`` windowed to
        ``[burnout, anatomy_high]`` → ``[0, 0.7]``, values above compressed by
        ``0.7 + 0.3 (1 - exp(-0.5 (x - 1)))``, then raised to ``gamma``.
    """
    a = -np.log(counts / np.float32(params.photons))
    lo = float(params.burnout_attenuation)
    x = (a - np.float32(lo)) / np.float32(max(anatomy_high - lo, 0.1))
    knee = np.float32(0.7) + np.float32(0.3) * (1.0 - np.exp(-0.5 * np.maximum(x - 1.0, 0.0)))
    v = np.where(x <= 1.0, np.float32(0.7) * np.clip(x, 0.0, None), knee)
    v = np.clip(v, 0.0, 1.0) ** np.float32(params.gamma)
    return np.rint(v * np.float32((1 << BITS_STORED) - 1)).astype(np.uint16)
