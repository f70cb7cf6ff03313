"""Carry a corrected tooth mask from one frame to the rest of the clip (doctor-in-the-loop).

When a dentist corrects the mask of frame ``k`` (with clicks or a box), the correction is
carried frame by frame, forwards and backwards: the mask of the last visited frame is
warped onto its neighbour with DIS optical flow (:func:`propagate_mask`), then the
neighbour is re-segmented by SAM prompted with that warped mask's box and pseudo-logits
(:meth:`ToothSegmenter.refine_with_mask`). SAM snaps the warped mask to the
neighbour's tooth edges, so flow errors do not accumulate the way pure warping would.

A frame is needed only as a :class:`CarryFrame`, what the flow and the segmenter see of it
(a few hundred kilobytes whatever the frame size), so a caller streaming a long clip can
keep or spool those instead of the frames (:mod:`dicom_service.pipelines.correction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicom_service.vision.optical_flow import DisFlow, warp_residual
from dicom_service.vision.tooth_predictor import ToothSegmenter, propagate_mask


@dataclass(frozen=True)
class CarryFrame:
    """What carrying a mask onto or from a frame needs of it.

    Attributes
    ----------
    resized : np.ndarray
        ``(h, w, 3)`` uint8 RGB, :meth:`ToothSegmenter.resize` of the frame (longest side
        the tooth model's ``img_size``).
    grey : np.ndarray
        ``(h', w')`` uint8, :meth:`DisFlow.grey` of the frame (longest side at most the
        flow's ``max_side``).
    size : tuple of int
        The frame's ``(H, W)``.
    """

    resized: np.ndarray
    grey: np.ndarray
    size: tuple[int, int]

    @classmethod
    def of(cls, frame: np.ndarray, segmenter: ToothSegmenter, flow: DisFlow) -> CarryFrame:
        """The carry frame of ``frame`` ``(H, W, 3)`` uint8 RGB."""
        return cls(segmenter.resize(frame), flow.grey(frame), (int(frame.shape[0]), int(frame.shape[1])))


def carry_mask(segmenter: ToothSegmenter, flow: DisFlow, mask: np.ndarray, source: CarryFrame,
               target: CarryFrame) -> np.ndarray:
    """``mask`` ``(H, W)`` bool of frame ``source`` carried onto the neighbouring frame
    ``target``: warped by the DIS flow source → target, then re-segmented by SAM prompted
    with the warped mask (:meth:`ToothSegmenter.refine_with_mask`). Replaces the
    segmenter's cached image with ``target``'s. Returns ``(H, W)`` bool."""
    warped = propagate_mask(mask, flow.between(source.grey, target.grey, source.size))
    segmenter.set_resized(target.resized, target.size)
    return segmenter.refine_with_mask(warped).mask


#: :func:`~dicom_service.vision.optical_flow.warp_residual` above which a frame is taken not
#: to follow from the previous one (a scene cut) and is segmented afresh: about twice the
#: largest residual between consecutive frames of the degraded test phantoms (0.031) and
#: two thirds of the smallest across a cut between two of them (0.088).
SCENE_CUT_RESIDUAL = 0.06


def is_keyframe(t: int, every: int, current: np.ndarray | None = None, previous: np.ndarray | None = None,
                back_flow: np.ndarray | None = None) -> bool:
    """True if frame ``t`` of a clip is segmented by the tooth model when it is run on every
    ``every``-th frame (frame 0 always is); :func:`warp_to_next` carries the others. Given
    the frame ``current``, the one before it and the flow between them (as for
    :func:`~dicom_service.vision.optical_flow.warp_residual`), a frame the flow does not
    explain (residual above :data:`SCENE_CUT_RESIDUAL`, a scene cut) is a keyframe too.
    """
    if t % every == 0:
        return True
    if current is None or previous is None or back_flow is None:
        return False
    return warp_residual(current, previous, back_flow) > SCENE_CUT_RESIDUAL


def warp_to_next(mask: np.ndarray, back_flow: np.ndarray) -> np.ndarray:
    """The mask ``(H, W)`` bool of frame ``t - 1`` carried onto frame ``t`` by the flow
    ``back_flow`` ``(H, W, 2)`` float32 ``(dx, dy)`` from ``t`` to ``t - 1`` (what the video
    stream computes for the motion fusion): each pixel of ``t`` samples the mask where it
    was in ``t - 1``, an exact backward warp (no re-segmentation). Returns ``(H, W)`` bool."""
    return propagate_mask(mask, np.negative(back_flow))  # propagate_mask samples at q - flow(q)


def keyframe_masks(segmenter: ToothSegmenter, frames: np.ndarray, every: int, flow: DisFlow | None = None, *,
                   automatic: np.ndarray | None = None,
                   back_flows: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """Automatic tooth masks ``(T, H, W)`` bool of ``frames`` ``(T, H, W, 3)`` uint8 RGB with
    the tooth model run on every ``every``-th frame only and the masks of the frames between
    carried forward by DIS flow (:func:`warp_to_next`), and on every scene cut
    (:func:`is_keyframe`); ``every == 1`` is the model on every frame. The clip-in-memory
    twin of the video runtime's ``segment_every``, for evaluation.

    ``automatic`` (the ``(T, H, W)`` automatic masks of every frame) and ``back_flows`` (entry
    ``t`` the flow ``t`` → ``t - 1``, as :func:`~dicom_service.vision.optical_flow.clip_flows`
    gives), when the caller has them already, are used instead of running the tooth model
    and the flow again.

    Raises
    ------
    ValueError
        ``every < 1`` or frames not ``(T, H, W, 3)`` uint8.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    flow = flow or DisFlow()
    masks = np.zeros(frames.shape[:3], dtype=bool)
    for t, frame in enumerate(frames):
        back = None if t % every == 0 else back_flows[t] if back_flows is not None else flow(frame, frames[t - 1])
        if not is_keyframe(t, every, frame, frames[t - 1] if t else None, back):
            masks[t] = warp_to_next(masks[t - 1], back)
        elif automatic is not None:
            masks[t] = automatic[t]
        else:
            segmenter.set_image(frame)
            masks[t] = segmenter.automatic().mask
    return masks


def propagate_correction(segmenter: ToothSegmenter, frames: np.ndarray, index: int, corrected: np.ndarray,
                         *, radius: int | None = None, flow: DisFlow | None = None) -> dict[int, np.ndarray]:
    """Masks of the neighbours of frame ``index`` carried from its corrected mask.

    Parameters
    ----------
    segmenter : ToothSegmenter
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    index : int
        The corrected frame, ``0 <= index < T``.
    corrected : np.ndarray
        ``(H, W)`` bool, the corrected mask of frame ``index``.
    radius : int or None
        How many frames on each side to update (None: the whole clip).
    flow : DisFlow or None
        Flow estimator (a new DIS one when None).

    Returns
    -------
    dict
        Frame index → ``(H, W)`` bool mask, including ``index`` itself (``corrected``).

    Raises
    ------
    ValueError
        Bad shapes or an index outside the clip.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    count = frames.shape[0]
    if not 0 <= index < count:
        raise ValueError(f"frame index {index} outside the clip of {count} frames")
    if corrected.shape != frames.shape[1:3] or corrected.dtype != np.bool_:
        raise ValueError(f"corrected mask must be {frames.shape[1:3]} bool, got {corrected.shape} {corrected.dtype}")
    if radius is not None and radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    reach = count if radius is None else radius
    flow = flow or DisFlow()
    masks = {index: corrected}
    for step in (1, -1):
        previous, source, t = corrected, CarryFrame.of(frames[index], segmenter, flow), index + step
        while 0 <= t < count and abs(t - index) <= reach:
            target = CarryFrame.of(frames[t], segmenter, flow)
            previous = carry_mask(segmenter, flow, previous, source, target)
            masks[t] = previous
            source, t = target, t + step
    return masks
