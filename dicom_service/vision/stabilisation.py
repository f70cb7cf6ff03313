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
_GRID_STEP = 8


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
        (x = column, y = row) and rotation in radians; row 0 is zero.
    """
    count, height, width = frames.shape[:3]
    motion = np.zeros((count, 3), dtype=np.float64)
    if count < 2:
        return motion
    factor = min(1.0, _FLOW_MAX_SIDE / float(max(height, width)))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    previous = grey_scaled(frames[0], factor)
    small_h, small_w = previous.shape
    ys, xs = np.mgrid[_GRID_STEP // 2:small_h:_GRID_STEP, _GRID_STEP // 2:small_w:_GRID_STEP]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    centre = np.array([(small_w - 1) / 2.0, (small_h - 1) / 2.0])
    for t in range(1, count):
        current = grey_scaled(frames[t], factor)
        flow = dis.calc(previous, current, None)
        moved = points + flow[ys.ravel(), xs.ravel()]
        matrix, _ = cv2.estimateAffinePartial2D(points, moved, method=cv2.RANSAC,
                                                ransacReprojThreshold=1.0)
        if matrix is None:  # degenerate (flat) frames: fall back to the median flow
            shift = np.median(flow.reshape(-1, 2), axis=0)
            motion[t] = (shift[0] / factor, shift[1] / factor, 0.0)
        else:
            shift = matrix[:, :2] @ centre + matrix[:, 2] - centre
            motion[t] = (shift[0] / factor, shift[1] / factor, math.atan2(matrix[1, 0], matrix[0, 0]))
        previous = current
    return motion


def _moving_average(path: np.ndarray, radius: int) -> np.ndarray:
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
    jitter = path[:, :2] - _moving_average(path, radius)[:, :2]
    return float(np.sqrt(np.mean(np.sum(jitter ** 2, axis=1))))


def _correction_matrix(dx: float, dy: float, da: float, width: int, height: int) -> np.ndarray:
    """2x3 matrix rotating by ``da`` about the frame centre, then shifting by ``(dx, dy)``."""
    rotation = np.array([[math.cos(da), -math.sin(da)], [math.sin(da), math.cos(da)]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = centre - rotation @ centre + np.array([dx, dy])
    return np.hstack([rotation, shift[:, None]]).astype(np.float32)


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
    path = np.cumsum(motion, axis=0)
    correction = _moving_average(path, radius) - path
    height, width = frames.shape[1:3]
    out = np.empty_like(frames)
    for t in range(frames.shape[0]):
        matrix = _correction_matrix(*correction[t], width, height)
        out[t] = cv2.warpAffine(frames[t], matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def smoothing_radius(fps: float, count: int, seconds: float) -> int:
    """Moving-average radius (frames) for a path smoothed over ``seconds``, kept below
    half the clip length."""
    return max(1, min(int(round(fps * seconds / 2.0)), max(1, (count - 1) // 2)))
