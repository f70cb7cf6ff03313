"""Image-quality metrics for restoration: PSNR and SSIM (Wang et al., 2004).

Both take uint8 RGB frames ``(H, W, 3)`` (or stacks ``(T, H, W, 3)``) with data range
255. SSIM uses the usual 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
computed per channel and averaged.
"""

from __future__ import annotations

import cv2
import numpy as np

#: SSIM constants (Wang et al., 2004): Gaussian window side and sigma, K1 and K2.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
_C1 = (SSIM_K1 * 255) ** 2
_C2 = (SSIM_K2 * 255) ** 2


def psnr(result: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical).

    Parameters
    ----------
    result, reference : np.ndarray
        uint8 arrays of one shape, ``(..., H, W, 3)``.
    mask : np.ndarray or None
        ``(..., H, W)`` bool: only these pixels count (e.g. the tooth region).
    """
    if result.shape != reference.shape:
        raise ValueError(f"shapes differ: {result.shape} vs {reference.shape}")
    diff = (result.astype(np.float64) - reference.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        diff = diff[mask]
    mse = float(diff.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2)
    return float((num / den).mean())


def ssim(result: np.ndarray, reference: np.ndarray) -> float:
    """Mean structural similarity of two uint8 RGB frames or stacks of frames.

    Parameters
    ----------
    result, reference : np.ndarray
        ``(H, W, 3)`` or ``(T, H, W, 3)`` uint8, one shape.
    """
    if result.shape != reference.shape:
        raise ValueError(f"shapes differ: {result.shape} vs {reference.shape}")
    frames_a = result.reshape((-1,) + result.shape[-3:]).astype(np.float64)
    frames_b = reference.reshape((-1,) + reference.shape[-3:]).astype(np.float64)
    values = [_ssim_channel(fa[..., c], fb[..., c])
              for fa, fb in zip(frames_a, frames_b, strict=True) for c in range(fa.shape[-1])]
    return float(np.mean(values))


def gain_corrected(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``result`` times the per-channel gains that best fit ``reference`` (least squares).

    A diagnostic, not a method: it needs the reference. The PSNR it leaves tells how much
    of the error is a global colour / exposure error and how much is detail.

    Parameters
    ----------
    result, reference : np.ndarray
        ``(..., 3)`` uint8 RGB of the same shape (a frame or a clip).

    Returns
    -------
    np.ndarray
        uint8 of the same shape (rounded, clamped).
    """
    if result.shape != reference.shape or result.shape[-1] != 3:
        raise ValueError(f"need two (..., 3) arrays of one shape, got {result.shape} and {reference.shape}")
    r = result.reshape(-1, 3).astype(np.float64)
    gains = (r * reference.reshape(-1, 3)).sum(axis=0) / np.maximum((r * r).sum(axis=0), 1e-9)
    return np.clip(r * gains + 0.5, 0, 255).astype(np.uint8).reshape(result.shape)


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two ``(H, W)`` bool masks (1.0 when both are empty)."""
    if predicted.shape != truth.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {truth.shape}")
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0
