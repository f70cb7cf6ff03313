"""The narrow interface between pipelines and vision models.

Pipelines only ever talk to a :class:`VideoRuntime` or a :class:`RadiographRuntime`;
which implementation answers (classical baseline, learned model, CPU or GPU) is chosen
by :func:`dicom_service.vision.registry.build_video_runtime` and
:func:`dicom_service.vision.registry.build_radiograph_runtime` from the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from dicom_service.domain import AlgorithmInfo, EnhancementOutcome, RadiographResult, VideoEnhancement

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


def checked_frames(frames: Iterable[np.ndarray], count: int) -> Iterator[np.ndarray]:
    """Yield ``count`` frames of a streamed clip, each checked as :func:`check_clip` checks a
    whole one (``(H, W, 3)`` uint8, H, W >= 16, one size for all).

    Raises
    ------
    ValueError
        A bad frame, or more or fewer frames than ``count`` (``count < 1`` included).
    """
    if count < 1:
        raise ValueError(f"a clip needs at least one frame, got count {count}")
    size: tuple[int, ...] | None = None
    index = -1
    for index, frame in enumerate(frames):
        if index >= count:
            raise ValueError(f"the clip has more than the {count} frames announced")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype} at frame {index}")
        size = size or frame.shape
        if frame.shape != size:
            raise ValueError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the clip {size[1]}x{size[0]}")
        if min(frame.shape[:2]) < 16:
            raise ValueError(f"frames must be at least 16x16 pixels, got {frame.shape[1]}x{frame.shape[0]}")
        yield frame
    if index + 1 < count:
        raise ValueError(f"the clip ended after {index + 1} of the {count} frames announced")


def checked_stream(frames: Iterable[np.ndarray], count: int, fps: float) -> Iterator[np.ndarray]:
    """Check a :meth:`VideoRuntime.enhance_stream` input: ``fps`` at once, the frames as they
    come (:func:`checked_frames`).

    Raises
    ------
    ValueError
        ``fps`` is not positive (at once); a bad frame or count (while iterating).
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return checked_frames(frames, count)


class EnhancementSink(Protocol):
    """Receives a streamed clip's results as the runtime makes them (the video workflow
    encodes the frames and packs the masks at once, so a clip is never held whole)."""

    def start(self, fps: float) -> None:
        """The enhanced frames' rate; called once, before the first frame."""
        ...

    def frame(self, frame: np.ndarray) -> None:
        """The next enhanced frame ``(H', W', 3)`` uint8 RGB (all of one size)."""
        ...

    def mask(self, mask: np.ndarray) -> None:
        """The tooth mask ``(H, W)`` bool of the next input frame, in input order."""
        ...


class CollectingSink:
    """An :class:`EnhancementSink` that keeps everything, for :meth:`VideoRuntime.enhance`."""

    def __init__(self) -> None:
        self.fps = 0.0
        self.frames: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def start(self, fps: float) -> None:
        self.fps = fps

    def frame(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def mask(self, mask: np.ndarray) -> None:
        self.masks.append(mask)

    def result(self, outcome: EnhancementOutcome) -> VideoEnhancement:
        """The collected frames ``(T', H', W', 3)`` and masks ``(T, H, W)`` with ``outcome``."""
        return VideoEnhancement(fps=outcome.fps, algorithm=outcome.algorithm, steps=outcome.steps,
                                metrics=outcome.metrics, frames=np.stack(self.frames), tooth_masks=np.stack(self.masks))


@runtime_checkable
class VideoRuntime(Protocol):
    """Restores and enhances intraoral camera frames."""

    info: AlgorithmInfo

    def enhance(self, frames: np.ndarray, fps: float, progress: Progress | None = None) -> VideoEnhancement:
        """Enhance a clip held in memory.

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

    def enhance_stream(self, frames: Iterable[np.ndarray], count: int, fps: float, sink: EnhancementSink,
                       progress: Progress | None = None) -> EnhancementOutcome:
        """Enhance a clip that arrives one frame at a time, handing the results to ``sink``
        (the same frames and masks :meth:`enhance` returns, in order).

        Parameters
        ----------
        frames : iterable
            ``count`` frames ``(H, W, 3)`` uint8 RGB (checked by :func:`checked_frames`).
        count : int
            Frames in the clip (>= 1).
        fps : float
            Frame rate (> 0).
        sink : EnhancementSink
        progress : callable or None
            As for :meth:`enhance`.
        """
        ...

    def working_bytes(self, count: int, height: int, width: int, fps: float) -> int:
        """Memory :meth:`enhance_stream` holds at its peak for a clip of ``count`` frames of
        ``height x width`` at ``fps``, in bytes: an upper estimate of the arrays it keeps
        (the frames it buffers, their masks and results), not counting what the
        sink keeps; the pipeline checks it before decoding."""
        ...

    def compute_bytes(self, count: int, height: int, width: int, fps: float) -> int:
        """Peak memory, in bytes, of what :meth:`enhance_stream` allocates outside the arrays
        :meth:`working_bytes` counts: network activations (torch tensors, freed after each
        frame but held by the allocator) and library buffers, for frames of
        ``height x width``; it does not grow with ``count``. Measured per pixel by
        ``python -m benchmarks.video_memory --stages``."""
        ...


@runtime_checkable
class MaskGuidedRuntime(Protocol):
    """A :class:`VideoRuntime` whose restoration a caller can guide with tooth masks (a
    dentist's corrected Segmentation: the doctor-in-the-loop restoration of seed 000)."""

    info: AlgorithmInfo
    #: Whether the restoration uses the masks at all (False: given masks cannot change it).
    uses_tooth_masks: bool

    def enhance_stream(self, frames: Iterable[np.ndarray], count: int, fps: float, sink: EnhancementSink,
                       progress: Progress | None = None, *,
                       masks: Iterable[np.ndarray] | None = None) -> EnhancementOutcome:
        """:meth:`VideoRuntime.enhance_stream`, restoring with ``masks`` (one ``(H, W)``
        bool per frame, in order) instead of the runtime's own tooth masks when given."""
        ...


def restores_with_masks(runtime: object) -> bool:
    """Whether ``runtime`` is a :class:`MaskGuidedRuntime` whose restoration uses the masks
    (so that a dentist's corrected masks can change its result)."""
    return isinstance(runtime, MaskGuidedRuntime) and runtime.uses_tooth_masks


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
