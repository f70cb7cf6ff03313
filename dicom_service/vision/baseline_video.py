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

The clip streams through: each frame is masked at once, held only until the camera path
``radius`` frames ahead is known, and written as soon as its next neighbour is denoised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import cv2
import numpy as np

from dicom_service.domain import AlgorithmInfo, EnhancementOutcome, VideoEnhancement
from dicom_service.vision.runtime import (
    CollectingSink,
    EnhancementSink,
    Progress,
    ProgressThrottle,
    check_clip,
    checked_stream,
)
from dicom_service.vision.stabilisation import (
    DEFAULT_SMOOTHING_SECONDS,
    MotionEstimator,
    StreamStabiliser,
    shake_px,
    smoothing_radius,
    stabilisation_step,
)

log = logging.getLogger(__name__)

NAME = "classical-opencv-video-baseline"
VERSION = "1.0.0"
_TOOTH_MIN_LEVEL = 120
_TOOTH_MIN_COMPONENT = 0.002
_TEMPORAL_SIGMA = 12.0
#: OpenCV's buffers per pixel on the first frames (``python -m benchmarks.video_memory --stages``).
OPENCV_BYTES_PER_PIXEL = 48


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

    def __init__(self, *, stabilise: bool = True, smoothing_seconds: float = DEFAULT_SMOOTHING_SECONDS,
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

    def _spatial(self, frame: np.ndarray) -> np.ndarray:
        if self.bilateral_sigma <= 0:
            return frame
        return cv2.bilateralFilter(frame, 5, self.bilateral_sigma, 3.0)

    @staticmethod
    def _temporal_blend(previous: np.ndarray | None, current: np.ndarray, following: np.ndarray | None) -> np.ndarray:
        """Motion-guarded ``[1, 2, 1] / 4`` average of ``current`` with its neighbours
        (``(H, W, 3)`` uint8; ``None`` at the ends of the clip).

        A neighbour's per-pixel weight is ``exp(-(d / 12)^2)`` with ``d`` the grey-level
        absolute difference to the current frame, so moving content is not blended.
        """
        levels = np.arange(256, dtype=np.float32)
        lut = np.exp(-((levels / _TEMPORAL_SIGMA) ** 2)).astype(np.float32)
        centre = current.astype(np.float32)
        correction = np.zeros_like(centre)
        weights = np.full(current.shape[:2], 2.0, dtype=np.float32)
        for neighbour in (previous, following):
            if neighbour is not None:
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
            steps.append(stabilisation_step(self.smoothing_seconds))
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

    def working_bytes(self, count: int, height: int, width: int, fps: float) -> int:
        """Peak bytes :meth:`enhance_stream` holds (see :class:`VideoRuntime`).

        The clip streams through, so per pixel of one frame: the input frames the
        stabiliser holds until the camera path ``radius`` frames ahead is known
        (``radius + 2`` frames of 3 bytes), three denoised frames for the temporal blend
        (9), the blend's float temporaries (64), the output frame and its CIELAB copy (6)
        and the mask (1); and three motion rows per frame.
        """
        radius = smoothing_radius(fps, count, self.smoothing_seconds)
        return height * width * (3 * (radius + 2) + 9 + 64 + 6 + 1) + count * 3 * 3 * 8

    def compute_bytes(self, count: int, height: int, width: int, fps: float) -> int:
        """OpenCV's own buffers (see :class:`VideoRuntime`): the DIS flow's pyramids on
        frames of at most 320 pixels and the filters' temporaries, bounded by
        :data:`OPENCV_BYTES_PER_PIXEL` per pixel."""
        return OPENCV_BYTES_PER_PIXEL * height * width

    def enhance_stream(self, frames: Iterable[np.ndarray], count: int, fps: float, sink: EnhancementSink,
                       progress: Progress | None = None) -> EnhancementOutcome:
        """:meth:`enhance` for a clip that arrives one frame at a time (see
        :class:`VideoRuntime`): each frame is masked at once, stabilised once the camera
        path ``radius`` frames ahead is known, and enhanced and written to ``sink`` once its
        next denoised neighbour is in, so memory does not grow with the clip; the frames
        and masks are those :meth:`enhance` returns.

        Raises
        ------
        ValueError
            See :func:`~dicom_service.vision.runtime.checked_stream`.
        """
        source = checked_stream(frames, count, fps)
        started = time.perf_counter()
        radius = smoothing_radius(fps, count, self.smoothing_seconds)
        stabilised = self.stabilise and count >= 2
        temporal = self.temporal and count >= 2
        sink.start(float(fps))
        tick = ProgressThrottle(progress)
        before = np.zeros((count, 3), dtype=np.float64)
        after = np.zeros((count, 3), dtype=np.float64)
        stabiliser = StreamStabiliser(count, radius) if stabilised else None
        estimators: tuple[MotionEstimator, MotionEstimator] | None = None
        window: list[np.ndarray] = []  # denoised frames t - 1, t, t + 1
        tooth_pixels = written = 0

        def write(previous: np.ndarray | None, current: np.ndarray, following: np.ndarray | None) -> None:
            nonlocal written
            out = self._enhance_frame(self._temporal_blend(previous, current, following) if temporal else current)
            if estimators is not None:
                after[written] = estimators[1].push(out)
            written += 1
            sink.frame(out)
            tick(f"enhanced {written}/{count} frames")

        def denoise(frame: np.ndarray) -> None:
            nonlocal window
            window = [*window[-2:], self._spatial(frame)]
            if len(window) >= 2:
                write(window[-3] if len(window) == 3 else None, window[-2], window[-1])

        for t, frame in enumerate(source):
            frame = np.ascontiguousarray(frame)
            mask = tooth_mask(frame)
            tooth_pixels += int(np.count_nonzero(mask))
            sink.mask(mask)
            if count >= 2:
                estimators = estimators or (MotionEstimator(*frame.shape[:2]), MotionEstimator(*frame.shape[:2]))
                before[t] = estimators[0].push(frame)
            for ready in stabiliser.push(frame, before[t]) if stabiliser is not None else [frame]:
                denoise(ready)
        write(window[-2] if len(window) >= 2 else None, window[-1], None)
        height, width = window[-1].shape[:2]
        shake_before = shake_px(before, radius)
        shake_after = shake_px(after, radius) if count >= 2 else 0.0
        seconds = time.perf_counter() - started
        metrics = {
            "tooth_area_fraction": tooth_pixels / float(count * height * width),
            "shake_px_before": shake_before,
            "shake_px_after": shake_after,
            "seconds": seconds,
        }
        log.info("classical video baseline: %d frames %dx%d in %.2f s (shake %.2f -> %.2f px)",
                 count, width, height, seconds, shake_before, shake_after)
        return EnhancementOutcome(fps=float(fps), algorithm=self.info, steps=self._steps(stabilised, count),
                                  metrics=metrics)

    def enhance(self, frames: np.ndarray, fps: float, progress: Progress | None = None) -> VideoEnhancement:
        """Stabilise, denoise, enhance a clip held in memory and segment its teeth
        (:meth:`enhance_stream` over its frames).

        Parameters
        ----------
        frames : np.ndarray
            ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``, any size >= 16x16.
        fps : float
            Frame rate (> 0; 1.0 for a still photograph).
        progress : callable or None
            Receives about one line per second; an exception it raises stops the work.

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
        check_clip(frames, fps)
        sink = CollectingSink()
        outcome = self.enhance_stream(iter(frames), int(frames.shape[0]), fps, sink, progress)
        return sink.result(outcome)
