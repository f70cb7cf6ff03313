"""Stabilisation measured against the phantoms' true camera motion (``eval video``).

The runtime's own ``shake_px_before`` / ``shake_px_after`` re-estimate the motion from the
frames they judge, so an estimator that misses the shake would also miss it afterwards.
Here the judge is the true flow: the phantom background moves by an exact similarity
between frames (the instrument, when there is one, is left out by RANSAC), so chaining
those similarities gives where a fixed set of scene points lies in every frame. The
stabilised frame ``t`` is frame ``t`` warped by the correction the runtime computed
(:func:`~dicom_service.vision.stabilisation.correction_matrices`), so the points' true
positions in the stabilised clip follow. Shake is the RMS second difference of those
positions over consecutive frames, ``p(t + 1) - 2 p(t) + p(t - 1)``, in pixels per
frame²: zero for a still camera or a steady pan, about 3 A for a vibration of
amplitude A at a third of the frame rate. (The runtime's own measure, the distance from
a moving average, is dominated by the ends of clips as short as the eval's.)

``before``          the clip as rendered;
``after``           stabilised with the motion estimated from the given frames (the
                    restored frames in ``eval video``: what the node does);
``after_clean``     stabilised with the motion estimated from the clean frames (the
                    estimator without restoration errors);
``after_true``      stabilised with the true motion (what the moving average itself
                    leaves, e.g. at the clip's ends).

``motion_error_px`` is the RMS error of the estimated frame-centre displacement per
frame pair against the true one. ``border_fraction`` (mean over frames) and
``border_fraction_max`` (worst frame) are the share of the stabilised frame that the
``after`` corrections move in from outside the recorded frame (filled by replicating the
border): the price of smoothing over a longer window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dicom_service.training.video_phantoms import VideoClip
from dicom_service.vision.stabilisation import correction_matrices, estimate_motion, fit_similarity, matrix_motion

#: Where the tracked scene points start in frame 0, as fractions of (width, height).
TRACKED = ((0.5, 0.5), (0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))


def true_pair_matrices(flow: np.ndarray) -> np.ndarray:
    """``(T - 1, H, W, 2)`` true flow → ``(T - 1, 3, 3)`` similarity of each frame pair.

    Raises
    ------
    ValueError
        A pair whose flow fits no similarity (not a phantom's camera motion).
    """
    out = np.tile(np.eye(3), (flow.shape[0], 1, 1))
    for t, field in enumerate(flow):
        matrix = fit_similarity(field, threshold=0.05)
        if matrix is None:
            raise ValueError(f"true flow of pair {t} fits no similarity")
        out[t, :2] = matrix
    return out


def tracked_points(pairs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Positions ``(T, P, 2)`` (x, y) in each frame of the :data:`TRACKED` scene points."""
    start = np.array([[fx * (width - 1), fy * (height - 1), 1.0] for fx, fy in TRACKED])
    positions = [start]
    for matrix in pairs:
        positions.append(positions[-1] @ matrix.T)
    return np.stack(positions)[..., :2]


def shake(points: np.ndarray) -> float:
    """RMS length (px / frame²) of the second differences of ``(T, P, 2)`` tracks (T >= 3)."""
    accel = points[2:] - 2.0 * points[1:-1] + points[:-2]
    return float(np.sqrt(np.mean(np.sum(accel ** 2, axis=-1))))


def _stabilised(points: np.ndarray, corrections: np.ndarray) -> np.ndarray:
    """Tracks ``(T, P, 2)`` moved by ``(T, 2, 3)`` corrections (:func:`correction_matrices`)."""
    corrections = corrections.astype(np.float64)
    return np.einsum("tij,tpj->tpi", corrections[:, :, :2], points) + corrections[:, None, :, 2]


def border_fractions(corrections: np.ndarray, width: int, height: int, step: int = 4) -> np.ndarray:
    """Per frame, the share ``(T,)`` of the stabilised frame that lies outside the recorded
    frame (the runtime fills it by replicating the border), for ``(T, 2, 3)`` corrections
    (:func:`~dicom_service.vision.stabilisation.correction_matrices`); sampled on a grid of
    ``step`` pixels."""
    ys, xs = np.mgrid[step // 2:height:step, step // 2:width:step]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)  # (N, 2) x, y
    shares = []
    for matrix in corrections.astype(np.float64):
        source = (grid - matrix[:, 2]) @ np.linalg.inv(matrix[:, :2]).T
        outside = ((source[:, 0] < -0.5) | (source[:, 0] > width - 0.5)
                   | (source[:, 1] < -0.5) | (source[:, 1] > height - 0.5))
        shares.append(outside.mean())
    return np.asarray(shares)


def true_motion(pairs: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(T - 1, 3, 3)`` pair similarities → ``(T, 3)`` motion rows as
    :func:`~dicom_service.vision.stabilisation.estimate_motion` gives them."""
    return np.array([(0.0, 0.0, 0.0)] + [matrix_motion(matrix, width, height) for matrix in pairs])


def stabilisation_record(clip: VideoClip, frames: np.ndarray, radius: int) -> dict[str, float] | None:
    """Shake before and after stabilising ``frames`` (a version of ``clip``, e.g. restored),
    judged by ``clip``'s true flow; None without true flow or with fewer than 3 frames.

    Parameters
    ----------
    clip : VideoClip
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB frames co-registered with ``clip`` (the motion is
        estimated from them).
    radius : int
        The runtime's moving-average radius in frames.
    """
    records = stabilisation_records(clip, frames, (radius,))
    return None if records is None else records[0]


def stabilisation_records(clip: VideoClip, frames: np.ndarray,
                          radii: Sequence[int]) -> list[dict[str, float]] | None:
    """:func:`stabilisation_record` for each moving-average radius in ``radii`` (the motion
    is estimated once); None without true flow or with fewer than 3 frames."""
    if clip.flow is None or clip.clean.shape[0] < 3:
        return None
    height, width = clip.clean.shape[1:3]
    pairs = true_pair_matrices(clip.flow)
    points = tracked_points(pairs, width, height)
    truth = true_motion(pairs, width, height)
    estimated, clean = estimate_motion(frames), estimate_motion(clip.clean)
    error = float(np.sqrt(np.mean(np.sum((estimated[1:, :2] - truth[1:, :2]) ** 2, axis=1))))
    before = shake(points)
    records = []
    for radius in radii:
        applied = correction_matrices(estimated, radius, width, height)  # what the node applies
        border = border_fractions(applied, width, height)
        records.append({
            "before": before,
            "after": shake(_stabilised(points, applied)),
            "after_clean": shake(_stabilised(points, correction_matrices(clean, radius, width, height))),
            "after_true": shake(_stabilised(points, correction_matrices(truth, radius, width, height))),
            "motion_error_px": error,
            "border_fraction": float(border.mean()),
            "border_fraction_max": float(border.max()),
        })
    return records


def stabilisation_summary(records: Sequence[dict[str, float] | None]) -> dict[str, Any] | None:
    """Mean of each :func:`stabilisation_record` field over the clips that have one."""
    kept = [r for r in records if r is not None]
    if not kept:
        return None
    return {"clips": len(kept), **{key: float(np.mean([r[key] for r in kept])) for key in kept[0]}}
