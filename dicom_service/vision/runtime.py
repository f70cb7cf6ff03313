"""The narrow interface between pipelines and vision models.

Pipelines only ever talk to a :class:`VideoRuntime` or a :class:`RadiographRuntime`;
which implementation answers (classical baseline, learned model, CPU or GPU) is chosen
by :func:`dicom_service.vision.registry.build_video_runtime` and
:func:`dicom_service.vision.registry.build_radiograph_runtime` from the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from dicom_service.domain import AlgorithmInfo, RadiographResult, VideoEnhancement

#: Progress callback of a runtime: one line of text; it may raise to interrupt the work
#: (the job worker does so at shutdown).
Progress = Callable[[str], None]


class ProgressThrottle:
    """Forward progress lines at most once per ``seconds`` (and always when forced).

    Long loops call it on every item, so an interruption raised by ``progress`` lands
    within about ``seconds`` plus one item, while the log gets at most one line per
    ``seconds``.

    Parameters
    ----------
    progress : callable or None
        Receives the lines (None: nothing happens).
    seconds : float
    """

    def __init__(self, progress: Progress | None, seconds: float = 1.0) -> None:
        self.progress = progress
        self.seconds = seconds
        self._last = time.monotonic()

    def __call__(self, text: str, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self.seconds:
            self._last = now
            self.progress(text)


def check_clip(frames: np.ndarray, fps: float) -> None:
    """Validate a :meth:`VideoRuntime.enhance` input.

    Raises
    ------
    ValueError
        ``frames`` is not ``(T, H, W, 3)`` uint8 with ``T >= 1`` and H, W >= 16, or ``fps``
        is not positive.
    """
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    if min(frames.shape[1:3]) < 16:
        raise ValueError(f"frames must be at least 16x16 pixels, got {frames.shape[2]}x{frames.shape[1]}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")


@runtime_checkable
class VideoRuntime(Protocol):
    """Restores and enhances intraoral camera frames."""

    info: AlgorithmInfo

    def enhance(self, frames: np.ndarray, fps: float, progress: Progress | None = None) -> VideoEnhancement:
        """Enhance a clip.

        Parameters
        ----------
        frames : np.ndarray
            ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``.
        fps : float
            Frame rate of the clip (1.0 for a still photograph).
        progress : callable or None
            Receives progress lines during long clips (about one per second); an
            exception it raises aborts the work.
        """
        ...

    def working_bytes(self, count: int, height: int, width: int) -> int:
        """Memory :meth:`enhance` holds at its peak for a clip of ``count`` frames of
        ``height x width``, beyond the input frames themselves, in bytes (an upper
        estimate of the arrays that grow with the clip, including the returned frames
        and masks; the pipeline checks it before decoding)."""
        ...


@runtime_checkable
class RadiographRuntime(Protocol):
    """Finds implants on a radiograph."""

    info: AlgorithmInfo

    def detect(self, image: np.ndarray) -> RadiographResult:
        """Detect implants.

        Parameters
        ----------
        image : np.ndarray
            ``(rows, columns)`` float32 in ``[0, 1]`` where 1 is the most radiopaque
            (white on a normal radiograph), after Modality/VOI LUT and MONOCHROME1
            inversion.
        """
        ...
