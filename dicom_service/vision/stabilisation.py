"""Camera-shake stabilisation shared by the video runtimes.

The camera path is estimated from DIS optical flow between consecutive downscaled grey
frames (RANSAC similarity: rotation + translation about the frame centre), smoothed
with a centred moving average, and each frame is warped onto the smoothed path
(borders replicated).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dicom_service.vision.optical_flow import grey_scaled

_FLOW_MAX_SIDE = 320
#: Seconds of camera path the runtimes smooth over by default.
DEFAULT_SMOOTHING_SECONDS = 1.0
_GRID_STEP = 8


def fit_similarity(flow: np.ndarray, *, step: int = _GRID_STEP, threshold: float = 1.0) -> np.ndarray | None:
    """RANSAC similarity (rotation, uniform scale, translation) fitted to a flow on a grid.

    Parameters
    ----------
    flow : np.ndarray
        ``(H, W, 2)`` flow ``(dx, dy)`` from the first frame to the second.
    step : int
        Grid spacing in pixels.
    threshold : float
        RANSAC inlier distance in pixels (points moving otherwise, such as an instrument,
        are left out).

    Returns
    -------
    np.ndarray or None
        ``(2, 3)`` float64 matrix mapping first-frame ``(x, y)`` to second-frame ``(x, y)``;
        None when no similarity fits (flat frames).
    """
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[step // 2:height:step, step // 2:width:step]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    moved = np.ascontiguousarray(points + flow[ys.ravel(), xs.ravel()], dtype=np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(points, moved, method=cv2.RANSAC, ransacReprojThreshold=threshold)
    return matrix


def similarity_motion(flow: np.ndarray) -> tuple[float, float, float]:
    """Camera motion of one frame pair from its flow (:func:`fit_similarity`).

    Parameters
    ----------
    flow : np.ndarray
        ``(H, W, 2)`` flow ``(dx, dy)`` from the first frame to the second.

    Returns
    -------
    tuple of float
        ``(dx, dy, da)``: displacement of the frame centre in pixels of ``flow`` (x =
        column, y = row) and rotation in radians. Falls back to the median flow and no
        rotation when no similarity fits.
    """
    matrix = fit_similarity(flow)
    if matrix is None:
        shift = np.median(flow.reshape(-1, 2), axis=0)
        return float(shift[0]), float(shift[1]), 0.0
    return matrix_motion(matrix, flow.shape[1], flow.shape[0])


def matrix_motion(matrix: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """``(dx, dy, da)`` of a ``(2, 3)`` or ``(3, 3)`` similarity on frames of ``width`` x
    ``height``: where it moves the frame centre (pixels, x = column) and its rotation (radians)."""
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = matrix[:2, :2] @ centre + matrix[:2, 2] - centre
    return float(shift[0]), float(shift[1]), math.atan2(matrix[1, 0], matrix[0, 0])


def estimate_motion(frames: np.ndarray) -> np.ndarray:
    """Frame-to-frame camera motion.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.

    Returns
    -------
    np.ndarray
        ``(T, 3)`` float64: row ``t`` is the motion from frame ``t-1`` to ``t`` as
        ``(dx, dy, da)``: displacement of the frame centre in full-resolution pixels
        (x = column, y = row) and rotation in radians (:func:`similarity_motion` of the
        DIS flow between downscaled grey frames); row 0 is zero.
    """
    count, height, width = frames.shape[:3]
    motion = np.zeros((count, 3), dtype=np.float64)
    if count < 2:
        return motion
    factor = min(1.0, _FLOW_MAX_SIDE / float(max(height, width)))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    previous = grey_scaled(frames[0], factor)
    for t in range(1, count):
        current = grey_scaled(frames[t], factor)
        dx, dy, da = similarity_motion(dis.calc(previous, current, None))
        motion[t] = (dx / factor, dy / factor, da)
        previous = current
    return motion


def moving_average(path: np.ndarray, radius: int) -> np.ndarray:
    """Centred moving average of ``(T, K)`` along axis 0 with edge padding."""
    if radius < 1 or path.shape[0] < 2:
        return path.copy()
    padded = np.pad(path, ((radius, radius), (0, 0)), mode="edge")
    kernel = np.ones(2 * radius + 1) / (2 * radius + 1)
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(path.shape[1])], 1)


def shake_px(motion: np.ndarray, radius: int) -> float:
    """RMS distance in pixels between the camera path and its moving average.

    Parameters
    ----------
    motion : np.ndarray
        ``(T, 3)`` from :func:`estimate_motion`.
    radius : int
        Moving-average radius in frames.
    """
    if motion.shape[0] < 2:
        return 0.0
    path = np.cumsum(motion, axis=0)
    jitter = path[:, :2] - moving_average(path, radius)[:, :2]
    return float(np.sqrt(np.mean(np.sum(jitter ** 2, axis=1))))


def _correction_matrix(dx: float, dy: float, da: float, width: int, height: int) -> np.ndarray:
    """2x3 matrix rotating by ``da`` about the frame centre, then shifting by ``(dx, dy)``."""
    rotation = np.array([[math.cos(da), -math.sin(da)], [math.sin(da), math.cos(da)]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = centre - rotation @ centre + np.array([dx, dy])
    return np.hstack([rotation, shift[:, None]]).astype(np.float32)


def correction_matrices(motion: np.ndarray, radius: int, width: int, height: int) -> np.ndarray:
    """The warps that move each frame from the camera path onto its moving average.

    Parameters
    ----------
    motion, radius
        As for :func:`stabilise`.
    width, height : int
        Frame size in pixels.

    Returns
    -------
    np.ndarray
        ``(T, 2, 3)`` float32 affine matrices mapping a frame's ``(x, y)`` to the
        stabilised frame's.
    """
    path = np.cumsum(motion, axis=0)
    correction = moving_average(path, radius) - path
    return np.stack([_correction_matrix(*row, width, height) for row in correction])


def stabilise(frames: np.ndarray, motion: np.ndarray, radius: int) -> np.ndarray:
    """Warp each frame from the camera path onto its moving average.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    motion : np.ndarray
        ``(T, 3)`` from :func:`estimate_motion` (of these or of co-registered frames).
    radius : int
        Moving-average radius in frames.

    Returns
    -------
    np.ndarray
        ``(T, H, W, 3)`` uint8, the stabilised frames.
    """
    height, width = frames.shape[1:3]
    out = np.empty_like(frames)
    for t, matrix in enumerate(correction_matrices(motion, radius, width, height)):
        out[t] = cv2.warpAffine(frames[t], matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def smoothing_radius(fps: float, count: int, seconds: float) -> int:
    """Moving-average radius (frames) for a path smoothed over ``seconds``, kept below
    half the clip length."""
    return max(1, min(int(round(fps * seconds / 2.0)), max(1, (count - 1) // 2)))
