"""Classical (OpenCV only) restoration and enhancement of intraoral camera clips.

Steps, in order:

1. camera-shake stabilisation: DIS optical flow between consecutive downscaled grey
   frames → RANSAC similarity (rotation + translation about the frame centre) → the
   cumulative camera path is smoothed with a moving average → each frame is warped
   onto the smoothed path (borders replicated);
2. denoising: an edge-preserving bilateral filter per frame, then a 3-tap temporal
   average of the (stabilised) neighbours whose per-pixel weight falls with the
   difference to the current frame, so that moving content does not ghost;
3. contrast: CLAHE on the L channel of CIELAB;
4. sharpening: unsharp mask;
5. tooth mask on the *input* frames: bright, low-saturation, warm-white pixels
   (Otsu on the minimum RGB channel with a floor, red >= blue), opening/closing,
   small components removed.
"""

from __future__ import annotations

import logging
import math
import time

import cv2
import numpy as np

from dicom_service.domain import AlgorithmInfo, VideoEnhancement

log = logging.getLogger(__name__)

NAME = "classical-opencv-video-baseline"
VERSION = "1.0.0"
_FLOW_MAX_SIDE = 320
_GRID_STEP = 8
_TOOTH_MIN_LEVEL = 120
_TOOTH_MIN_COMPONENT = 0.002
_TEMPORAL_SIGMA = 12.0


def _grey_small(frame: np.ndarray, factor: float) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if factor < 1.0:
        grey = cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return grey


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
    previous = _grey_small(frames[0], factor)
    small_h, small_w = previous.shape
    ys, xs = np.mgrid[_GRID_STEP // 2:small_h:_GRID_STEP, _GRID_STEP // 2:small_w:_GRID_STEP]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    centre = np.array([(small_w - 1) / 2.0, (small_h - 1) / 2.0])
    for t in range(1, count):
        current = _grey_small(frames[t], factor)
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


def tooth_mask(frame: np.ndarray) -> np.ndarray:
    """Classical tooth mask of one frame.

    Parameters
    ----------
    frame : np.ndarray
        ``(H, W, 3)`` uint8 RGB.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, True on bright, low-saturation, warm-white pixels.
    """
    blurred = cv2.GaussianBlur(frame, (5, 5), 0)
    whiteness = cv2.min(cv2.min(blurred[..., 0], blurred[..., 1]), blurred[..., 2])
    otsu, _ = cv2.threshold(whiteness, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    level = max(float(otsu), float(_TOOTH_MIN_LEVEL))
    warm = blurred[..., 0].astype(np.int16) + 4 >= blurred[..., 2].astype(np.int16)
    mask = ((whiteness > level) & warm).astype(np.uint8)
    size = max(3, (min(frame.shape[:2]) // 80) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = _TOOTH_MIN_COMPONENT * mask.size
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


class ClassicalVideoRuntime:
    """OpenCV baseline implementing :class:`~dicom_service.vision.runtime.VideoRuntime`.

    Parameters
    ----------
    stabilise : bool
        Remove camera shake (ignored for single frames).
    smoothing_seconds : float
        Length of the camera-path moving average, in seconds (radius = half of it).
    bilateral_sigma : float
        Colour sigma of the bilateral filter (0 disables it).
    temporal : bool
        Blend each frame with its stabilised neighbours (motion-guarded).
    clahe_clip : float
        CLAHE clip limit on the L channel (0 disables CLAHE).
    unsharp_amount : float
        Unsharp-mask gain (0 disables sharpening).

    Raises
    ------
    ValueError
        If a parameter is negative or ``smoothing_seconds`` is not positive.
    """

    def __init__(self, *, stabilise: bool = True, smoothing_seconds: float = 1.0,
                 bilateral_sigma: float = 20.0, temporal: bool = True, clahe_clip: float = 2.0,
                 unsharp_amount: float = 0.6) -> None:
        if smoothing_seconds <= 0:
            raise ValueError(f"smoothing_seconds must be > 0, got {smoothing_seconds}")
        for key, value in (("bilateral_sigma", bilateral_sigma), ("clahe_clip", clahe_clip),
                           ("unsharp_amount", unsharp_amount)):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        self.stabilise = stabilise
        self.smoothing_seconds = smoothing_seconds
        self.bilateral_sigma = bilateral_sigma
        self.temporal = temporal
        self.clahe_clip = clahe_clip
        self.unsharp_amount = unsharp_amount
        self.info = AlgorithmInfo(
            name=NAME, version=VERSION, family="baseline",
            parameters=(f"stabilise={stabilise} smoothing_s={smoothing_seconds} "
                        f"bilateral_sigma={bilateral_sigma} temporal={temporal} "
                        f"clahe_clip={clahe_clip} unsharp={unsharp_amount}"),
        )

    def _radius(self, fps: float, count: int) -> int:
        return max(1, min(int(round(fps * self.smoothing_seconds / 2.0)), max(1, (count - 1) // 2)))

    def _stabilised(self, frames: np.ndarray, motion: np.ndarray, radius: int) -> np.ndarray:
        path = np.cumsum(motion, axis=0)
        correction = _moving_average(path, radius) - path
        height, width = frames.shape[1:3]
        out = np.empty_like(frames)
        for t in range(frames.shape[0]):
            matrix = _correction_matrix(*correction[t], width, height)
            out[t] = cv2.warpAffine(frames[t], matrix, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
        return out

    def _spatial(self, frame: np.ndarray) -> np.ndarray:
        if self.bilateral_sigma <= 0:
            return frame
        return cv2.bilateralFilter(frame, 5, self.bilateral_sigma, 3.0)

    @staticmethod
    def _temporal_blend(frames: np.ndarray, t: int, current: np.ndarray) -> np.ndarray:
        """Motion-guarded ``[1, 2, 1] / 4`` average with the neighbours of frame ``t``.

        A neighbour's per-pixel weight is ``exp(-(d / 12)^2)`` with ``d`` the grey-level
        absolute difference to the current frame, so moving content is not blended.
        """
        levels = np.arange(256, dtype=np.float32)
        lut = np.exp(-((levels / _TEMPORAL_SIGMA) ** 2)).astype(np.float32)
        centre = current.astype(np.float32)
        correction = np.zeros_like(centre)
        weights = np.full(current.shape[:2], 2.0, dtype=np.float32)
        for other in (t - 1, t + 1):
            if 0 <= other < frames.shape[0]:
                neighbour = frames[other]
                diff = cv2.cvtColor(cv2.absdiff(neighbour, current), cv2.COLOR_RGB2GRAY)
                weight = cv2.LUT(diff, lut)
                delta = cv2.subtract(neighbour.astype(np.float32), centre)
                correction = cv2.add(correction, cv2.multiply(delta, cv2.merge([weight] * 3)))
                weights = cv2.add(weights, weight)
        blended = cv2.add(centre, cv2.divide(correction, cv2.merge([weights] * 3)))
        return cv2.convertScaleAbs(blended)  # rounds and saturates to uint8 (values are >= 0)

    def _enhance_frame(self, frame: np.ndarray) -> np.ndarray:
        out = frame
        if self.clahe_clip > 0:
            lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)
            tiles = (max(1, min(8, frame.shape[1] // 32)), max(1, min(8, frame.shape[0] // 32)))
            clahe = cv2.createCLAHE(clipLimit=self.clahe_clip, tileGridSize=tiles)
            lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
            out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        if self.unsharp_amount > 0:
            blurred = cv2.GaussianBlur(out, (0, 0), 1.5)
            out = cv2.addWeighted(out, 1.0 + self.unsharp_amount, blurred, -self.unsharp_amount, 0)
        return out

    def _steps(self, stabilised: bool, count: int) -> list[str]:
        steps: list[str] = []
        if stabilised:
            steps.append("Camera-shake stabilisation (DIS optical flow, RANSAC similarity, "
                         f"camera path smoothed over {self.smoothing_seconds:g} s)")
        if self.bilateral_sigma > 0:
            steps.append(f"Edge-preserving bilateral denoising (colour sigma {self.bilateral_sigma:g})")
        if self.temporal and count >= 2:
            steps.append("Motion-guarded temporal averaging of neighbouring frames")
        if self.clahe_clip > 0:
            steps.append(f"Contrast-limited adaptive histogram equalisation on CIELAB L (clip {self.clahe_clip:g})")
        if self.unsharp_amount > 0:
            steps.append(f"Unsharp-mask sharpening (amount {self.unsharp_amount:g})")
        steps.append("Tooth mask: bright low-saturation warm-white pixels, morphological clean-up")
        return steps

    def enhance(self, frames: np.ndarray, fps: float) -> VideoEnhancement:
        """Stabilise, denoise, enhance a clip and segment its teeth.

        Parameters
        ----------
        frames : np.ndarray
            ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``, any size >= 16x16.
        fps : float
            Frame rate (> 0; 1.0 for a still photograph).

        Returns
        -------
        VideoEnhancement
            Frames ``(T, H, W, 3)`` uint8 RGB (same size), tooth masks ``(T, H, W)``
            bool on the input frames, metrics ``tooth_area_fraction``,
            ``shake_px_before``, ``shake_px_after``, ``seconds``.

        Raises
        ------
        ValueError
            If ``frames`` is not ``(T, H, W, 3)`` uint8 with ``T >= 1`` and H, W >= 16,
            or ``fps`` is not positive.
        """
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
            raise ValueError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
        if min(frames.shape[1:3]) < 16:
            raise ValueError(f"frames must be at least 16x16 pixels, got {frames.shape[2]}x{frames.shape[1]}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        started = time.perf_counter()
        frames = np.ascontiguousarray(frames)
        count = frames.shape[0]
        radius = self._radius(fps, count)
        masks = np.stack([tooth_mask(frame) for frame in frames])
        motion = estimate_motion(frames)
        before = shake_px(motion, radius)
        stabilised = self.stabilise and count >= 2
        work = self._stabilised(frames, motion, radius) if stabilised else frames
        denoised = np.stack([self._spatial(frame) for frame in work])
        out = np.empty_like(frames)
        for t in range(count):
            current = denoised[t]
            if self.temporal and count >= 2:
                current = self._temporal_blend(denoised, t, current)
            out[t] = self._enhance_frame(current)
        after = shake_px(estimate_motion(out), radius) if count >= 2 else 0.0
        seconds = time.perf_counter() - started
        metrics = {
            "tooth_area_fraction": float(masks.mean()),
            "shake_px_before": before,
            "shake_px_after": after,
            "seconds": seconds,
        }
        log.info("classical video baseline: %d frames %dx%d in %.2f s (shake %.2f -> %.2f px)",
                 count, frames.shape[2], frames.shape[1], seconds, before, after)
        return VideoEnhancement(frames=out, tooth_masks=masks, fps=float(fps), algorithm=self.info,
                                steps=self._steps(stabilised, count), metrics=metrics)
