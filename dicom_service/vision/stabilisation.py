"""Camera-shake stabilisation shared by the video runtimes.

The camera path is estimated between consecutive downscaled grey frames: a RANSAC
similarity fitted to their DIS optical flow, refined by ECC image alignment (a rigid
motion: rotation + translation about the frame centre) on the pixels that follow that
similarity (an instrument moving on its own is left out). The path is smoothed with a
centred moving average and each frame is warped onto the smoothed path (borders
replicated).

Why the ECC step: judged by the phantoms' true camera motion on 10 s clips
(``dicom-service eval stabilisation``), the DIS fit alone is off by about 0.13 px per
frame pair on restored frames, and that error, not the moving average, was most of the
shake left after stabilisation; ECC maximises the correlation of the two frames directly
and halves the error (README, "Stabilisation on 10 s clips").
"""

from __future__ import annotations

import math
from collections import deque

import cv2
import numpy as np

from dicom_service.vision.optical_flow import grey_scaled

_FLOW_MAX_SIDE = 320
#: Seconds of camera path the runtimes smooth over by default.
DEFAULT_SMOOTHING_SECONDS = 1.0
_GRID_STEP = 8
#: Pixels whose DIS flow is further than this from the fitted similarity (pixels of the
#: downscaled frame) are left out of the ECC refinement.
_ECC_INLIER_PX = 1.0
#: An ECC result that moves the frame centre further than this from the DIS fit (pixels of
#: the downscaled frame) is a wrong optimum (repetitive texture); the DIS fit is kept.
_ECC_MAX_CHANGE_PX = 2.0
#: Side of the erosion that also leaves out a 2-pixel rim around those pixels.
_ECC_RIM = 5
_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5)


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


def matrix_motion(matrix: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """``(dx, dy, da)`` of a ``(2, 3)`` or ``(3, 3)`` similarity on frames of ``width`` x
    ``height``: where it moves the frame centre (pixels, x = column) and its rotation (radians)."""
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = matrix[:2, :2] @ centre + matrix[:2, 2] - centre
    return float(shift[0]), float(shift[1]), math.atan2(matrix[1, 0], matrix[0, 0])


def refine_similarity(previous: np.ndarray, current: np.ndarray, matrix: np.ndarray,
                      flow: np.ndarray) -> np.ndarray:
    """Refine a similarity fitted to DIS flow by ECC alignment of the two frames.

    ECC (OpenCV's ``findTransformECC``) fits a rigid motion (rotation + translation) here;
    the similarity's zoom is taken as it is: ``previous`` is first scaled by it about the
    frame centre, and the rigid motion found is composed with that scaling.

    Parameters
    ----------
    previous, current : np.ndarray
        ``(H, W)`` uint8 grey frames.
    matrix : np.ndarray
        ``(2, 3)`` similarity mapping ``previous`` ``(x, y)`` to ``current`` ``(x, y)``
        (:func:`fit_similarity` of ``flow``).
    flow : np.ndarray
        ``(H, W, 2)`` DIS flow ``(dx, dy)`` previous → current; pixels more than
        :data:`_ECC_INLIER_PX` from ``matrix``'s motion (and a 2-pixel rim around them) are
        left out.

    Returns
    -------
    np.ndarray
        ``(2, 3)`` float64 similarity mapping ``previous`` to ``current``; ``matrix`` itself
        when ECC does not converge, has too few pixels to work on, or lands more than
        :data:`_ECC_MAX_CHANGE_PX` from ``matrix`` at the frame centre.
    """
    height, width = previous.shape
    fitted = matrix.astype(np.float64)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    off_x = flow[..., 0] - ((matrix[0, 0] - 1.0) * xs + matrix[0, 1] * ys + matrix[0, 2])
    off_y = flow[..., 1] - (matrix[1, 0] * xs + (matrix[1, 1] - 1.0) * ys + matrix[1, 2])
    inliers = (off_x * off_x + off_y * off_y < _ECC_INLIER_PX ** 2).astype(np.uint8)
    inliers = cv2.erode(inliers, np.ones((_ECC_RIM, _ECC_RIM), np.uint8))
    if inliers.sum() < 0.1 * height * width:
        return fitted
    full = np.vstack([fitted, [0.0, 0.0, 1.0]])
    scale = math.sqrt(abs(float(np.linalg.det(full[:2, :2]))))
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    zoom = np.eye(3)
    zoom[:2, :2] *= scale
    zoom[:2, 2] = centre - scale * centre
    size = (width, height)
    scaled = cv2.warpAffine(previous, zoom[:2], size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(inliers, zoom[:2], size, flags=cv2.INTER_NEAREST)
    start = (full @ np.linalg.inv(zoom))[:2].astype(np.float32)  # rigid: the zoom divided out
    try:
        _, rigid = cv2.findTransformECC(scaled, current, start, cv2.MOTION_EUCLIDEAN, _ECC_CRITERIA, mask, 1)
    except cv2.error:  # did not converge (flat or uncorrelated frames)
        return fitted
    refined = (np.vstack([rigid, [0.0, 0.0, 1.0]]) @ zoom)[:2]
    moved = np.subtract(matrix_motion(refined, width, height)[:2], matrix_motion(fitted, width, height)[:2])
    plausible = bool(np.all(np.isfinite(refined))) and float(np.hypot(*moved)) <= _ECC_MAX_CHANGE_PX
    return refined if plausible else fitted


class MotionEstimator:
    """Frame-to-frame camera motion, one frame at a time (what :func:`estimate_motion` does
    for a whole clip, for clips streamed through the runtime).

    Parameters
    ----------
    height, width : int
        Frame size in pixels (every pushed frame has it).
    """

    def __init__(self, height: int, width: int) -> None:
        self.factor = min(1.0, _FLOW_MAX_SIDE / float(max(height, width)))
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.previous: np.ndarray | None = None

    def push(self, frame: np.ndarray) -> np.ndarray:
        """The motion from the previously pushed frame to ``frame`` ``(H, W, 3)`` uint8 RGB:
        ``(3,)`` float64 ``(dx, dy, da)`` as a row of :func:`estimate_motion` (zero for the
        first frame)."""
        current = grey_scaled(frame, self.factor)
        previous, self.previous = self.previous, current
        if previous is None:
            return np.zeros(3, dtype=np.float64)
        flow = self.dis.calc(previous, current, None)
        matrix = fit_similarity(flow)
        if matrix is None:
            shift = np.median(flow.reshape(-1, 2), axis=0)
            dx, dy, da = float(shift[0]), float(shift[1]), 0.0
        else:
            dx, dy, da = matrix_motion(refine_similarity(previous, current, matrix, flow), *previous.shape[::-1])
        return np.array([dx / self.factor, dy / self.factor, da], dtype=np.float64)


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
        (x = column, y = row) and rotation in radians (:func:`fit_similarity` of the DIS
        flow between grey frames downscaled to at most 320 pixels, refined by
        :func:`refine_similarity`; the median flow and no rotation where no similarity fits);
        row 0 is zero.
    """
    count, height, width = frames.shape[:3]
    motion = np.zeros((count, 3), dtype=np.float64)
    if count < 2:
        return motion
    estimator = MotionEstimator(height, width)
    for t in range(count):
        motion[t] = estimator.push(frames[t])
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


def stabilise(frames: np.ndarray, motion: np.ndarray, radius: int, *, in_place: bool = False) -> np.ndarray:
    """Warp each frame from the camera path onto its moving average.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    motion : np.ndarray
        ``(T, 3)`` from :func:`estimate_motion` (of these or of co-registered frames).
    radius : int
        Moving-average radius in frames.
    in_place : bool
        Write the stabilised frames over ``frames`` (which must be writable) instead of
        into a new array: a long clip then costs one copy less.

    Returns
    -------
    np.ndarray
        ``(T, H, W, 3)`` uint8, the stabilised frames (``frames`` itself when ``in_place``).
    """
    height, width = frames.shape[1:3]
    out = frames if in_place else np.empty_like(frames)
    for t, matrix in enumerate(correction_matrices(motion, radius, width, height)):
        out[t] = cv2.warpAffine(frames[t], matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def smoothed_row(path: np.ndarray, t: int, radius: int, count: int) -> np.ndarray:
    """Row ``t`` of :func:`moving_average` of a ``(count, K)`` path, from the rows
    ``max(0, t - radius) .. min(count - 1, t + radius)`` of ``path`` alone (later rows may
    still be unknown); bit for bit the same value."""
    if radius < 1 or count < 2:
        return path[t].copy()
    window = path[np.clip(np.arange(t - radius, t + radius + 1), 0, count - 1)]
    kernel = np.ones(2 * radius + 1) / (2 * radius + 1)
    return np.array([np.convolve(window[:, k], kernel, mode="valid")[0] for k in range(path.shape[1])])


class StreamStabiliser:
    """:func:`stabilise` for a clip that arrives one frame at a time.

    A frame's correction needs the camera path ``radius`` frames ahead, so the stabiliser
    holds at most ``radius + 1`` frames; it returns frames as soon as they can be corrected,
    in order, equal bit for bit to :func:`stabilise` of the whole clip with
    :func:`estimate_motion` of it.

    Parameters
    ----------
    count : int
        Frames in the clip (>= 1).
    radius : int
        Moving-average radius in frames.
    """

    def __init__(self, count: int, radius: int) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.count, self.radius = count, radius
        self.path = np.zeros((count, 3), dtype=np.float64)
        self.known = 0
        self.pending: deque[np.ndarray] = deque()

    def push(self, frame: np.ndarray, motion: np.ndarray) -> list[np.ndarray]:
        """Add the next frame ``(H, W, 3)`` uint8 and its motion row (``(3,)``, from
        :class:`MotionEstimator`); return the stabilised frames now ready (oldest first)."""
        t = self.known
        if t >= self.count:
            raise ValueError(f"more than the {self.count} frames announced")
        self.path[t] = motion if t == 0 else self.path[t - 1] + motion
        self.known += 1
        self.pending.append(frame)
        ready: list[np.ndarray] = []
        while self.pending:
            first = self.known - len(self.pending)
            if min(first + self.radius, self.count - 1) >= self.known:
                break
            ready.append(self._warp(self.pending.popleft(), first))
        return ready

    def _warp(self, frame: np.ndarray, t: int) -> np.ndarray:
        height, width = frame.shape[:2]
        correction = smoothed_row(self.path, t, self.radius, self.count) - self.path[t]
        return cv2.warpAffine(frame, _correction_matrix(*correction, width, height), (width, height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def stabilisation_step(smoothing_seconds: float) -> str:
    """The processing-step line the runtimes record for stabilisation (provenance text)."""
    return ("Camera-shake stabilisation (DIS optical flow, RANSAC similarity refined by ECC alignment, "
            f"camera path smoothed over {smoothing_seconds:g} s)")


def smoothing_radius(fps: float, count: int, seconds: float) -> int:
    """Moving-average radius (frames) for a path smoothed over ``seconds``, kept below
    half the clip length."""
    return max(1, min(int(round(fps * seconds / 2.0)), max(1, (count - 1) // 2)))
