"""PSNR, SSIM and the channel-gain diagnostic against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_service.training.image_metrics import psnr, ssim


def test_psnr_of_a_known_error() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[...] = 110  # MSE 100 -> 10 log10(255^2 / 100)
    assert psnr(b, a) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    assert psnr(a, a) == float("inf")


def test_psnr_inside_a_mask_only() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    mask = np.zeros((4, 4), bool)
    mask[2:, 2:] = True
    assert psnr(b, a, mask) == float("inf")
    assert np.isnan(psnr(b, a, np.zeros((4, 4), bool)))


def test_ssim_is_one_for_identical_and_falls_with_noise() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    very = np.clip(image + rng.normal(0, 60, image.shape), 0, 255).astype(np.uint8)
    assert 1.0 > ssim(noisy, image) > ssim(very, image)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))


def test_gain_corrected_removes_a_colour_cast_not_detail() -> None:
    from dicom_service.training.image_metrics import gain_corrected

    rng = np.random.default_rng(0)
    clean = rng.integers(40, 200, (2, 16, 16, 3), dtype=np.uint8)
    cast = np.clip(clean * np.array([0.8, 1.0, 1.2]), 0, 255).astype(np.uint8)
    assert psnr(cast, clean) < 25
    assert psnr(gain_corrected(cast, clean), clean) > 45  # a pure channel gain is undone
    noisy = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    assert abs(psnr(gain_corrected(noisy, clean), clean) - psnr(noisy, clean)) < 0.2  # detail error stays
    with pytest.raises(ValueError, match="one shape"):
        gain_corrected(cast[0], clean)
