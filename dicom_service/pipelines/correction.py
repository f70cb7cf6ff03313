"""Doctor-in-the-loop: a dentist's clicks or box on one frame → an amended tooth Segmentation.

The dentist looks at the AI's tooth Segmentation of a photo or video, finds a frame where it
is wrong, and clicks on it (positive clicks on missed tooth, negative ones on what is not
tooth) or draws a box around the teeth. :func:`correct_tooth_masks` decodes the source once,
frame by frame, and:

1. keeps the AI's masks on the frames the correction does not reach (read one at a time
   from its Segmentation, :func:`~dicom_service.media.seg_frames.segmentation_frames`;
   where that is not at hand they are segmented again in the automatic mode, as the node
   did), so the amended object covers the whole source like the original one;
2. keeps what the flow and the tooth model need of the frames before the corrected one
   and within reach (a :class:`~dicom_service.vision.mask_propagation.CarryFrame`, a few
   hundred kilobytes whatever the frame size) in a temporary file;
3. segments the corrected frame from the prompts with the interactive tooth model
   (:meth:`~dicom_service.vision.tooth_predictor.ToothSegmenter.predict`);
4. carries the corrected mask backwards through the spooled frames, then forwards as the
   next frames are decoded, ``radius`` frames each side (all of them by default), by
   optical flow and re-prompting (:func:`~dicom_service.vision.mask_propagation.carry_mask`,
   the step of :func:`~dicom_service.vision.mask_propagation.propagate_correction`, which
   gives the same masks on a clip held in memory);
5. packs the masks into a new BINARY Segmentation as they are settled, on disk (its own
   series, "AI tooth segmentation, corrected"; the segment's algorithm type
   SEMIAUTOMATIC; the content description says which frame was corrected and how far it
   was carried; the Content Creator's Name is the dentist's, when the API knows it).

Memory is a few frames' worth (:data:`CORRECTION_BYTES_PER_PIXEL`) and grows with the
clip's length only by the Segmentation's per-frame attributes and the allocator's slack
(:data:`CORRECTION_BYTES_PER_FRAME`); the temporary files take about
``(resized + grey + H*W/8)`` bytes per frame before the corrected one (0.25 MB at
640x480), and the Segmentation's packed bits.

The original AI Segmentation is left as it is: the amended one sits beside it in the study.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset

from dicom_service.domain import AlgorithmInfo, InputError, MediaError, StorageFullError
from dicom_service.media.seg_frames import PackedMasks, segmentation_frames
from dicom_service.media.video import FrameStream, open_frames
from dicom_service.pipelines.record_spool import RecordSpool
from dicom_service.vision.mask_propagation import CarryFrame, carry_mask
from dicom_service.vision.optical_flow import DEFAULT_MAX_SIDE, DisFlow
from dicom_service.vision.tooth_predictor import MaskPrediction, ToothSegmenter
from dicom_service.vision.video_runtime import automatic_mask
from dicom_service.writers.seg import MaskPacker, write_tooth_segmentation

#: Series Number of amended tooth Segmentations (the AI's own is 9102).
CORRECTED_TOOTH_SERIES = 9104
#: Working memory of a correction per pixel of one frame: the decoded frame, the flow at
#: full size and its warp grid, the masks and the tooth model's full-size logits. With the
#: fixed part (the tooth model's activations, decoder and allocator buffers) it is about
#: 1.5x the peaks ``python -m benchmarks.video_memory --correction`` measured (README).
CORRECTION_BYTES_PER_PIXEL = 96
CORRECTION_FIXED_BYTES = 128 * 2**20
#: What a correction's memory grows by per frame of the clip: the Segmentation's per-frame
#: attributes (:data:`~dicom_service.pipelines.video_memory.SEG_BYTES_PER_FRAME`, 12 kB)
#: and the rest measured with them (``python -m benchmarks.video_memory --correction``: 0.02
#: MiB per frame at 640x480, 0.05 at 1280x720 from 60 to 600 frames and at 3840x2160 from 30
#: to 300), about two and a half times the largest.
CORRECTION_BYTES_PER_FRAME = 128 * 1024
#: Disk left free beyond a correction's temporary files.
SPOOL_MARGIN_BYTES = 256 * 2**20


class MaskFrames(Protocol):
    """Masks of a clip, ``shape`` ``(T, H, W)``; ``[t]`` is frame ``t``'s ``(H, W)`` bool."""

    shape: tuple[int, ...]

    def __getitem__(self, index: int) -> np.ndarray: ...


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
    based_on : str or None
        SOP Instance UID of an earlier corrected Segmentation this one builds on (its masks
        stand where this correction does not reach, so corrections accumulate); None: the
        AI's own Segmentation.
    operator : str or None
        Who made it: a person's name as DICOM writes it (``Family^Given^...``, a named user
        of the API), recorded as the Segmentation's Content Creator's Name; None: nobody
        named (a service token).
    """

    frame: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    radius: int | None = None
    based_on: str | None = None
    operator: str | None = None

    def key(self) -> str:
        """A short digest of the correction (the same correction gives the same UIDs)."""
        doc = {"frame": self.frame, "radius": self.radius,
               "points": None if self.points is None else np.asarray(self.points, float).round(3).tolist(),
               "labels": None if self.labels is None else np.asarray(self.labels).tolist(),
               "box": None if self.box is None else np.asarray(self.box, float).round(3).tolist()}
        if self.based_on is not None:  # only then: a first correction keeps the digest it always had
            doc["based_on"] = self.based_on
        if self.operator is not None:  # the same prompts by two people are two objects, each with its creator
            doc["operator"] = self.operator
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        """The correction as JSON (a correction job's payload; :meth:`from_json` reads it)."""
        return {"frame": self.frame, "radius": self.radius,
                "points": None if self.points is None else np.asarray(self.points, float).tolist(),
                "labels": None if self.labels is None else np.asarray(self.labels).tolist(),
                "box": None if self.box is None else np.asarray(self.box, float).tolist(),
                "based_on": self.based_on, "operator": self.operator}

    @classmethod
    def from_json(cls, doc: dict) -> MaskCorrection:
        """The correction :meth:`to_json` wrote."""
        def array(key: str, dtype: type) -> np.ndarray | None:
            return None if doc.get(key) is None else np.asarray(doc[key], dtype=dtype)

        return cls(frame=int(doc["frame"]), points=array("points", np.float64), labels=array("labels", np.int64),
                   box=array("box", np.float64), radius=None if doc.get("radius") is None else int(doc["radius"]),
                   based_on=doc.get("based_on"), operator=doc.get("operator"))

    def check(self, frames: int, rows: int, columns: int) -> None:
        """Raise :class:`InputError` unless the prompts are usable on a source of ``frames``
        frames of ``rows`` x ``columns`` pixels (what the tooth model would refuse, found
        before any decoding): every click and both corners of the box must lie on the frame,
        ``0 <= x <= columns`` and ``0 <= y <= rows``."""
        if self.points is None and self.box is None:
            raise InputError("a correction needs clicks (points and labels) or a box")
        if (self.points is None) != (self.labels is None):
            raise InputError("points and labels go together")
        if self.points is not None and self.labels is not None:
            if self.points.ndim != 2 or self.points.shape[1:] != (2,) or len(self.points) != len(self.labels):
                raise InputError(f"{len(self.points)} points need as many labels, got {len(self.labels)}")
            if not np.isin(self.labels, (0, 1)).all():
                raise InputError("labels must be 0 (not tooth) or 1 (tooth)")
        if self.box is not None and (self.box.shape != (4,) or self.box[0] >= self.box[2]
                                     or self.box[1] >= self.box[3]):
            raise InputError(f"box must have x0 < x1 and y0 < y1, got {np.asarray(self.box).tolist()}")
        for name, xy in (("click", self.points), ("box corner", None if self.box is None else self.box.reshape(2, 2))):
            if xy is None:
                continue
            xy = np.asarray(xy, dtype=np.float64)
            outside = ~(np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] <= columns)
                        & (xy[:, 1] >= 0) & (xy[:, 1] <= rows))
            if outside.any():
                x, y = xy[int(np.argmax(outside))]
                raise InputError(f"{name} ({x:g}, {y:g}) is outside the {columns}x{rows} frame "
                                 f"(x in 0..{columns}, y in 0..{rows} pixels)")
        if not 0 <= self.frame < frames:
            raise InputError(f"frame {self.frame} is outside the source's {frames} frames (0-based)")
        if self.radius is not None and self.radius < 0:
            raise InputError(f"radius must be >= 0, got {self.radius}")

    def for_frames(self, frames: int) -> MaskCorrection:
        """This correction on a source of ``frames`` frames, with a ``radius`` that reaches
        every frame written as None (the whole clip), so that the same correction asked
        with any such radius is the same job with the same UIDs."""
        if self.radius is not None and self.radius >= frames - 1:
            return replace(self, radius=None)
        return self

    def describe(self, earlier: int = 0, frames: int = 2) -> str:
        """What was done, in a few words (the Segmentation's Content Description, at most
        64 characters); ``earlier``: corrections the Segmentation it builds on holds;
        ``frames``: the source's (a still photograph, 1, has no frame or reach to name)."""
        prompts = []
        if self.points is not None:
            labels = np.asarray(self.labels)
            prompts.append(f"{int((labels == 1).sum())}+/{int((labels == 0).sum())}- clicks")
        if self.box is not None:
            prompts.append("box")
        reach = "whole clip" if self.radius is None else f"+/-{self.radius} frames"
        if frames == 1:
            return f"Correction {earlier + 1} ({' '.join(prompts)})" if earlier else f"Corrected ({' '.join(prompts)})"
        if earlier:
            return f"Correction {earlier + 1}: frame {self.frame + 1} ({' '.join(prompts)}), {reach}"
        return f"Corrected on frame {self.frame + 1} ({' '.join(prompts)}), {reach}"


@dataclass(frozen=True)
class CorrectionResult:
    """The amended Segmentation and what it holds."""

    segmentation: Dataset
    frames: int
    corrected_frames: tuple[int, int]  # first and last 0-based frame the correction reached
    score: float  # the tooth model's predicted IoU of the corrected frame's mask
    tooth_fraction: float  # share of the corrected frame's pixels that are tooth


def correction_bytes(frames: int, rows: int, columns: int) -> int:
    """Memory a correction of ``frames`` frames of ``rows x columns`` works in: a fixed
    part, a few frames' worth, and what grows per frame (the Segmentation's per-frame
    attributes and the allocator's slack; its bits go to a temporary file)."""
    return CORRECTION_FIXED_BYTES + CORRECTION_BYTES_PER_PIXEL * rows * columns + CORRECTION_BYTES_PER_FRAME * frames


def check_correction_memory(frames: int, rows: int, columns: int, max_bytes: int | None) -> None:
    """Raise :class:`CorrectionTooLarge` if a correction of ``frames`` frames of
    ``rows x columns`` needs more than ``max_bytes`` (None: no limit)."""
    needed = correction_bytes(frames, rows, columns)
    if max_bytes is not None and needed > max_bytes:
        raise CorrectionTooLarge(f"a correction of {frames} frames of {columns}x{rows} takes {needed / 2**20:.0f} MiB, "
                                 f"more than the {max_bytes / 2**20:.0f} MiB allowed for a correction")


def check_correction_disk(segmenter: ToothSegmenter, count: int, rows: int, columns: int,
                          correction: MaskCorrection, spool_dir: Path | None = None) -> None:
    """Raise :class:`StorageFullError` if the temporary files of ``correction`` on a source
    of ``count`` frames of ``rows x columns`` would not fit on the disk (an estimate from
    the header, before decoding; the correction checks again with the exact sizes)."""
    first, _ = _reach(correction, count)
    resized = segmenter.transform.get_preprocess_shape(rows, columns, segmenter.model.image_encoder.img_size)
    flow = min(1.0, DEFAULT_MAX_SIDE / max(rows, columns))
    record = 3 * resized[0] * resized[1] + round(rows * flow) * round(columns * flow)
    _check_free(count, correction.frame - first, record, rows * columns, spool_dir)


def _check_free(count: int, earlier: int, record: int, pixels: int, spool_dir: Path | None) -> None:
    """StorageFullError unless the disk holds the Segmentation's packed bits (``count``
    frames of ``pixels``) and, for the ``earlier`` frames, a ``record`` and a packed mask
    each, with :data:`SPOOL_MARGIN_BYTES` to spare."""
    packed = (pixels + 7) // 8
    needed = count * packed + earlier * (record + packed) + SPOOL_MARGIN_BYTES
    free = RecordSpool.free_bytes(spool_dir)
    if needed > free:
        raise StorageFullError(f"the correction's temporary files ({count} frames, {earlier} of them carried "
                               f"backwards) need {needed / 2**20:.0f} MiB of disk, {free / 2**20:.0f} MiB are free")


def _reach(correction: MaskCorrection, count: int) -> tuple[int, int]:
    """First and last 0-based frame the correction reaches."""
    radius = count if correction.radius is None else correction.radius
    return max(0, correction.frame - radius), min(count - 1, correction.frame + radius)


def correct_tooth_masks(source: Dataset, segmenter: ToothSegmenter, correction: MaskCorrection, *,
                        algorithm: AlgorithmInfo, uid_seed: str, max_bytes: int | None = None,
                        previous: MaskFrames | None = None, spool_dir: Path | None = None,
                        on_frame: Callable[[int], None] | None = None, earlier: int = 0) -> CorrectionResult:
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
        Memory the correction may take (:func:`correction_bytes`, which does not grow with
        the clip but for the Segmentation's attributes); None: no limit.
    previous : array-like or None
        The AI's masks of the source's frames, ``shape`` ``(T, H, W)``, each ``[t]`` an
        ``(H, W)`` bool (an array, or :func:`segmentation_frames` of the AI's
        Segmentation, or of the earlier corrected one ``correction.based_on`` names): the
        frames the correction does not reach keep them. None: those frames are segmented
        again in the automatic mode.
    spool_dir : Path or None
        Where the temporary files go (the system's temporary folder by default).
    on_frame : callable, optional
        Called with the number of frames whose mask is known so far, after each one
        (progress; it may raise to abort, and the temporary files go with the error).
    earlier : int
        Corrections ``previous`` already holds (0: the AI's masks); the Content
        Description counts them.

    Raises
    ------
    InputError
        No prompt, a frame outside the source, bad prompt shapes or values.
    CorrectionTooLarge
        The frames are too large for ``max_bytes``.
    StorageFullError
        The temporary files would not fit on the disk.
    MediaError
        The source's pixels do not decode.
    """
    stream = open_frames(source)
    count, rows, columns = stream.count, int(source.Rows), int(source.Columns)
    if previous is not None and tuple(previous.shape) != (count, rows, columns):
        raise InputError(f"the AI's masks {tuple(previous.shape)} do not match the source's frames "
                         f"{(count, rows, columns)}")
    check_correction_memory(count, rows, columns, max_bytes)
    correction.check(count, rows, columns)
    first, last = _reach(correction, count)
    packer = MaskPacker(rows, columns, spool=tempfile.TemporaryFile(prefix="dicom-service-seg-",  # noqa: SIM115
                                                                    dir=spool_dir))
    try:
        prediction = _stream_correction(stream, segmenter, correction, (first, last), previous, packer, spool_dir,
                                        on_frame)
        seg = write_tooth_segmentation(source, packer, algorithm=algorithm,
                                       uid_seed=f"{uid_seed}/correction/{correction.key()}",
                                       series_number=CORRECTED_TOOTH_SERIES,
                                       correction=correction.describe(earlier, count), creator=correction.operator)
    except BaseException:
        assert packer.spool is not None
        packer.spool.close()
        raise
    return CorrectionResult(segmentation=seg, frames=count, corrected_frames=(first, last), score=prediction.score,
                            tooth_fraction=float(prediction.mask.mean()))


def _stream_correction(stream: FrameStream, segmenter: ToothSegmenter, correction: MaskCorrection,
                       reach: tuple[int, int], previous: MaskFrames | None, packer: MaskPacker,
                       spool_dir: Path | None, on_frame: Callable[[int], None] | None) -> MaskPrediction:
    """Decode ``stream`` once and add every frame's mask to ``packer`` in order (module
    docstring); return the corrected frame's prediction."""
    first, last = reach
    index = correction.frame
    flow = DisFlow()
    done = 0

    def settle(mask: np.ndarray) -> None:
        packer.add(mask)
        step()

    def step() -> None:  # one more frame's mask known
        nonlocal done
        done += 1
        if on_frame is not None:
            on_frame(done)

    behind: RecordSpool | None = None  # carry frames first..index-1, then their masks
    settled: RecordSpool | None = None
    try:
        for t, frame in enumerate(stream.frames):
            if t < first or t > last:
                settle(previous[t] if previous is not None else automatic_mask(segmenter, frame))
                continue
            here = CarryFrame.of(frame, segmenter, flow)
            if t < index:
                if behind is None:
                    behind, settled = _spools(here, index - first, stream.count, packer, spool_dir)
                behind.put(t - first, here.resized, here.grey)
                continue
            if t == index:
                segmenter.set_resized(here.resized, here.size)
                try:
                    prediction = segmenter.predict(correction.points, correction.labels, correction.box)
                except ValueError as error:
                    raise InputError(f"bad correction: {error}") from error
                if behind is not None and settled is not None:
                    _carry_backwards(segmenter, flow, prediction.mask, here, behind, settled, step)
                    for u in range(index - first):
                        packer.add(PackedMasks(settled.get(u)[0], (1, *here.size))[0])
                mask, carried_from = prediction.mask, here
            else:
                mask = carry_mask(segmenter, flow, mask, carried_from, here)
                carried_from = here
            settle(mask)
    finally:
        for spool in (behind, settled):
            if spool is not None:
                spool.close()
    if packer.frames != stream.count:
        raise MediaError(f"the source decoded to {packer.frames} of its {stream.count} frames")
    return prediction


def _spools(frame: CarryFrame, frames: int, count: int, packer: MaskPacker,
            spool_dir: Path | None) -> tuple[RecordSpool, RecordSpool]:
    """The temporary files of the ``frames`` frames before the corrected one (of ``count``):
    their carry frames and their masks; StorageFullError if they and the Segmentation's
    bits would not fit on the disk."""
    packed = (packer.rows * packer.columns + 7) // 8
    _check_free(count, frames, frame.resized.nbytes + frame.grey.nbytes, packer.rows * packer.columns, spool_dir)
    return (RecordSpool([(frame.resized.shape, np.uint8), (frame.grey.shape, np.uint8)], spool_dir),
            RecordSpool([((packed,), np.uint8)], spool_dir))


def _carry_backwards(segmenter: ToothSegmenter, flow: DisFlow, corrected: np.ndarray, frame: CarryFrame,
                     behind: RecordSpool, settled: RecordSpool, step: Callable[[], None]) -> None:
    """Carry ``corrected`` (the mask of ``frame``) through the spooled earlier frames, last
    to first, into ``settled`` (packed masks at the same indices); ``step()`` after each."""
    mask, carried_from = corrected, frame
    for u in range(behind.records - 1, -1, -1):
        resized, grey = behind.get(u)
        here = CarryFrame(resized, grey, frame.size)
        mask = carry_mask(segmenter, flow, mask, carried_from, here)
        settled.put(u, np.packbits(mask.reshape(-1), bitorder="little"))
        step()
        carried_from = here


def segmentation_masks(seg: Dataset, source_sop_instance_uid: str) -> np.ndarray | None:
    """The masks ``(T, H, W)`` bool of a tooth Segmentation of ``source_sop_instance_uid``
    (:func:`segmentation_frames`, all frames at once); None if ``seg`` is about another
    instance or is not such an object.

    Raises
    ------
    MediaError
        Its pixel data does not decode.
    """
    frames = segmentation_frames(seg, source_sop_instance_uid)
    if frames is None or isinstance(frames, np.ndarray):
        return frames
    return frames.all()
