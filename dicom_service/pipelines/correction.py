"""Doctor-in-the-loop: a dentist's clicks or box on one frame → an amended tooth Segmentation.

The dentist looks at the AI's tooth Segmentation of a photo or video, finds a frame where it
is wrong, and clicks on it (positive clicks on missed tooth, negative ones on what is not
tooth) or draws a box around the teeth. :func:`correct_tooth_masks`:

1. decodes the source's frames (the whole clip: a correction can reach any frame);
2. segments the corrected frame from the prompts with the interactive tooth model
   (:meth:`~dicom_service.vision.tooth_predictor.ToothSegmenter.predict`, the cached image
   embedding, SAM's prompt encoder and mask decoder);
3. carries the corrected mask to the neighbouring frames, ``radius`` on each side (all of
   them by default), by optical flow and re-prompting
   (:func:`~dicom_service.vision.mask_propagation.propagate_correction`);
4. keeps the AI's masks on every other frame (read from its Segmentation; where that is
   not at hand they are segmented again in the automatic mode, as the node did), so the
   amended object covers the whole source like the original one;
5. writes a new BINARY Segmentation (its own series, "AI tooth segmentation, corrected";
   the segment's algorithm type SEMIAUTOMATIC; the content description says which frame
   was corrected and how far it was carried).

The original AI Segmentation is left as it is: the amended one sits beside it in the study.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_service.domain import AlgorithmInfo, InputError
from dicom_service.media.pixels import DECODE_ERRORS, decode_error
from dicom_service.media.video import open_frames
from dicom_service.vision.mask_propagation import propagate_correction
from dicom_service.vision.tooth_predictor import ToothSegmenter
from dicom_service.vision.video_runtime import automatic_mask
from dicom_service.writers.seg import write_tooth_segmentation

#: Series Number of amended tooth Segmentations (the AI's own is 9102).
CORRECTED_TOOTH_SERIES = 9104


class CorrectionTooLarge(InputError):
    """The source's decoded frames would not fit in the memory allowed for a correction."""


@dataclass(frozen=True)
class MaskCorrection:
    """What the dentist did on one frame.

    Attributes
    ----------
    frame : int
        0-based index of the corrected frame (0 for a still photograph).
    points : np.ndarray or None
        ``(N, 2)`` float (x, y) pixel positions of the clicks on that frame.
    labels : np.ndarray or None
        ``(N,)`` int, 1 = tooth, 0 = not tooth.
    box : np.ndarray or None
        ``(4,)`` float ``x0, y0, x1, y1`` pixels around the teeth.
    radius : int or None
        Frames on each side the correction is carried to (None: the whole clip; 0: only
        the corrected frame).
    """

    frame: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    radius: int | None = None

    def key(self) -> str:
        """A short digest of the correction (the same correction gives the same UIDs)."""
        doc = {"frame": self.frame, "radius": self.radius,
               "points": None if self.points is None else np.asarray(self.points, float).round(3).tolist(),
               "labels": None if self.labels is None else np.asarray(self.labels).tolist(),
               "box": None if self.box is None else np.asarray(self.box, float).round(3).tolist()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """What was done, in a few words (the Segmentation's Content Description)."""
        prompts = []
        if self.points is not None:
            labels = np.asarray(self.labels)
            prompts.append(f"{int((labels == 1).sum())}+/{int((labels == 0).sum())}- clicks")
        if self.box is not None:
            prompts.append("box")
        reach = "whole clip" if self.radius is None else f"+/-{self.radius} frames"
        return f"Corrected on frame {self.frame + 1} ({' '.join(prompts)}), {reach}"


@dataclass(frozen=True)
class CorrectionResult:
    """The amended Segmentation and what it holds."""

    segmentation: Dataset
    frames: int
    corrected_frames: tuple[int, int]  # first and last 0-based frame the correction reached
    score: float  # the tooth model's predicted IoU of the corrected frame's mask
    tooth_fraction: float  # share of the corrected frame's pixels that are tooth


def correct_tooth_masks(source: Dataset, segmenter: ToothSegmenter, correction: MaskCorrection, *,
                        algorithm: AlgorithmInfo, uid_seed: str, max_bytes: int | None = None,
                        previous: np.ndarray | None = None) -> CorrectionResult:
    """Apply a dentist's correction to the tooth masks of ``source`` (module docstring).

    Parameters
    ----------
    source : Dataset
        The photo or video the AI segmented (a stored instance of the video workflow).
    segmenter : ToothSegmenter
        The interactive tooth model; its cached image is replaced.
    correction : MaskCorrection
    algorithm : AlgorithmInfo
        The tooth model's identification (recorded in the Segmentation).
    uid_seed : str
        Seed of the new object's UIDs (with :meth:`MaskCorrection.key`).
    max_bytes : int or None
        Memory the decoded clip may take (3 bytes per pixel and frame, plus two sets of
        masks); None: no limit.
    previous : np.ndarray or None
        ``(T, H, W)`` bool, the AI's masks of the source's frames (see
        :func:`segmentation_masks`): the frames the correction does not reach keep them.
        None: those frames are segmented again in the automatic mode.

    Raises
    ------
    InputError
        No prompt, a frame outside the source, bad prompt shapes or values.
    CorrectionTooLarge
        The clip would take more than ``max_bytes``.
    MediaError
        The source's pixels do not decode.
    """
    if correction.points is None and correction.box is None:
        raise InputError("a correction needs clicks (points and labels) or a box")
    stream = open_frames(source)
    count = stream.count
    shape = (count, int(source.Rows), int(source.Columns))
    if previous is not None and previous.shape != shape:
        raise InputError(f"the AI's masks {previous.shape} do not match the source's frames {shape}")
    needed = count * shape[1] * shape[2] * 5
    if max_bytes is not None and needed > max_bytes:
        raise CorrectionTooLarge(f"the clip's {count} frames take {needed / 2**20:.0f} MiB decoded, more than the "
                                 f"{max_bytes / 2**20:.0f} MiB allowed for a correction")
    if not 0 <= correction.frame < count:
        raise InputError(f"frame {correction.frame} is outside the source's {count} frames (0-based)")
    frames = np.stack(list(stream.frames))
    segmenter.set_image(frames[correction.frame])
    try:
        prediction = segmenter.predict(correction.points, correction.labels, correction.box)
    except ValueError as error:
        raise InputError(f"bad correction: {error}") from error
    carried = propagate_correction(segmenter, frames, correction.frame, prediction.mask, radius=correction.radius)
    masks = np.zeros(frames.shape[:3], dtype=bool)
    for t in range(count):
        if t in carried:
            masks[t] = carried[t]
        else:
            masks[t] = previous[t] if previous is not None else automatic_mask(segmenter, frames[t])
    reached = (min(carried), max(carried))
    seg = write_tooth_segmentation(source, masks, algorithm=algorithm,
                                   uid_seed=f"{uid_seed}/correction/{correction.key()}",
                                   series_number=CORRECTED_TOOTH_SERIES, correction=correction.describe())
    return CorrectionResult(segmentation=seg, frames=count, corrected_frames=reached, score=prediction.score,
                            tooth_fraction=float(prediction.mask.mean()))


def segmentation_masks(seg: Dataset, source_sop_instance_uid: str) -> np.ndarray | None:
    """The masks ``(T, H, W)`` bool of a tooth Segmentation of ``source_sop_instance_uid``
    (one segment, one frame per source frame, as :func:`write_tooth_segmentation` writes
    them); None if ``seg`` is about another instance or is not such an object.

    Raises
    ------
    MediaError
        Its pixel data does not decode.
    """
    try:
        referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        if source_sop_instance_uid not in referenced or len(seg.get("SegmentSequence", [])) != 1:
            return None
        shape = (int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))
    except (AttributeError, KeyError, ValueError, TypeError):
        return None
    try:
        return np.asarray(seg.pixel_array).reshape(shape).astype(bool)
    except DECODE_ERRORS as error:
        raise decode_error(error) from error
