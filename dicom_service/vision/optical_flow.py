"""Dense optical flow for the video models: OpenCV DIS, and its end-point error.

DIS (Kroeger et al., 2016) is the documented flow source of the motion branch: it runs
on grey frames downscaled to at most ``max_side`` pixels and the field is scaled back
up. A learned flow head is not bundled (see the restoration model card).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import cv2
import numpy as np

DEFAULT_MAX_SIDE = 320


def grey_scaled(frame: np.ndarray, factor: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → grey uint8, area-downscaled by ``factor`` when < 1."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if factor < 1.0:
        grey = cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return grey


class DisFlow:
    """Reusable DIS flow estimator (one OpenCV object, not thread-safe).

    Parameters
    ----------
    max_side : int
        Frames are downscaled so that their longer side is at most this.
    preset : int
        ``cv2.DISOPTICAL_FLOW_PRESET_*``.
    """

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE,
                 preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST) -> None:
        if max_side < 16:
            raise ValueError(f"max_side must be >= 16, got {max_side}")
        self.max_side = max_side
        self._dis = cv2.DISOpticalFlow_create(preset)

    def __call__(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Flow from ``source`` to ``target``.

        Parameters
        ----------
        source, target : np.ndarray
            ``(H, W, 3)`` uint8 RGB of the same size.

        Returns
        -------
        np.ndarray
            ``(H, W, 2)`` float32: at pixel (row y, column x) of ``source``, the
            displacement ``(dx, dy)`` in full-resolution pixels such that the point is at
            ``(x + dx, y + dy)`` in ``target``.
        """
        if source.shape != target.shape or source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"flow needs two (H, W, 3) frames of one size, got {source.shape} and {target.shape}")
        size = (int(source.shape[0]), int(source.shape[1]))
        return self.between(self.grey(source), self.grey(target), size)

    def grey(self, frame: np.ndarray) -> np.ndarray:
        """What the flow sees of a frame ``(H, W, 3)`` uint8 RGB: grey uint8, downscaled to
        at most ``max_side`` (a frame kept only for its flows can be kept as this)."""
        factor = min(1.0, self.max_side / float(max(frame.shape[:2])))
        return grey_scaled(frame, factor)

    def between(self, source: np.ndarray, target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Flow from ``source`` to ``target``, both :meth:`grey` of frames of ``size``
        ``(H, W)``; the same ``(H, W, 2)`` float32 field as calling the estimator on the frames."""
        if source.shape != target.shape or source.ndim != 2:
            raise ValueError(f"flow needs two grey images of one size, got {source.shape} and {target.shape}")
        height, width = size
        factor = min(1.0, self.max_side / float(max(height, width)))
        flow = self._dis.calc(source, target, None)
        if factor < 1.0:
            flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR) / factor
        return flow.astype(np.float32, copy=False)


class ClipFlows(Sequence):
    """The flows of a clip to a neighbour frame, computed when asked for, not held.

    A list of full-resolution flows costs ``8 * H * W`` bytes per frame (14 MiB at
    1280x720), several times the frames themselves; the runtimes read each flow once, so
    they take this instead of :func:`clip_flows`.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB (kept by reference, not copied).
    flow : DisFlow
    step : int
        -1 (to the previous frame) or +1 (to the next).

    Notes
    -----
    Entry ``t`` is ``(H, W, 2)`` float32 (x, y) frame ``t`` → frame ``t + step``, or None
    where the neighbour is outside the clip (the first or the last frame); each access
    computes it again.
    """

    def __init__(self, frames: np.ndarray, flow: DisFlow, step: int = -1) -> None:
        if step not in (-1, 1):
            raise ValueError(f"step must be -1 or +1, got {step}")
        self.frames, self.flow, self.step = frames, flow, step

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @overload
    def __getitem__(self, index: int) -> np.ndarray | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray | None]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | None | list[np.ndarray | None]:
        count = len(self)
        if isinstance(index, slice):
            return [self[t] for t in range(*index.indices(count))]
        t = index + count if index < 0 else index
        if not 0 <= t < count:
            raise IndexError(f"frame {index} outside a clip of {count}")
        other = t + self.step
        return self.flow(self.frames[t], self.frames[other]) if 0 <= other < count else None


def clip_flows(frames: np.ndarray, flow: DisFlow, step: int = -1) -> list[np.ndarray | None]:
    """Flows from each frame to its neighbour ``t + step`` (``step`` -1: previous, +1: next),
    all computed now (:class:`ClipFlows` computes them on demand instead).

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    flow : DisFlow
    step : int
        -1 or +1.

    Returns
    -------
    list
        ``T`` entries, ``(H, W, 2)`` float32 (x, y) frame ``t`` → frame ``t + step``;
        None where the neighbour is outside the clip (the first or the last frame).
    """
    return list(ClipFlows(frames, flow, step))


def warp_residual(current: np.ndarray, previous: np.ndarray, back_flow: np.ndarray, max_side: int = 160) -> float:
    """How badly ``previous`` warped by ``back_flow`` predicts ``current``: the mean absolute
    grey difference, in ``[0, 1]``, at most ``max_side`` pixels a side. Small where the frame
    follows from the previous one by the flow (0.02-0.03 between consecutive frames of the
    degraded phantom clips), large at a scene cut (0.09 and more).

    Parameters
    ----------
    current, previous : np.ndarray
        ``(H, W, 3)`` uint8 RGB of one size.
    back_flow : np.ndarray
        ``(H, W, 2)`` float32 ``(dx, dy)`` flow from ``current`` to ``previous``
        (:class:`DisFlow` called as ``flow(current, previous)``).
    max_side : int
        The frames and the flow are area-downscaled to at most this before comparing.
    """
    height, width = current.shape[:2]
    if previous.shape != current.shape or back_flow.shape != (height, width, 2):
        raise ValueError(f"need two frames of one size and their flow, got {current.shape}, {previous.shape} and "
                         f"{back_flow.shape}")
    factor = min(1.0, max_side / float(max(height, width)))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    here = cv2.cvtColor(cv2.resize(current, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    before = cv2.cvtColor(cv2.resize(previous, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    flow = cv2.resize(back_flow, size, interpolation=cv2.INTER_AREA) * np.float32(size[0] / width)
    cols, rows = np.meshgrid(np.arange(size[0], dtype=np.float32), np.arange(size[1], dtype=np.float32))
    warped = cv2.remap(before.astype(np.float32), cols + flow[..., 0], rows + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return float(np.mean(np.abs(warped - here.astype(np.float32)))) / 255.0


def lands_inside(flow: np.ndarray) -> np.ndarray:
    """``(H, W, 2)`` flow → ``(H, W)`` bool: the pixels whose destination lies inside the frame."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def endpoint_error(predicted: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean end-point error (pixels) between two ``(H, W, 2)`` flows.

    Parameters
    ----------
    predicted, true : np.ndarray
        ``(H, W, 2)`` flows (dx, dy).
    valid : np.ndarray or None
        ``(H, W)`` bool, pixels to average over (all when None).
    """
    if predicted.shape != true.shape:
        raise ValueError(f"flow shapes differ: {predicted.shape} vs {true.shape}")
    error = np.linalg.norm(predicted.astype(np.float64) - true, axis=-1)
    if valid is not None:
        if not valid.any():
            return float("nan")
        error = error[valid]
    return float(error.mean())
