"""The learned video runtime: SAM tooth masks → prior-guided, motion-aware restoration.

The clip ``(T, H, W, 3)`` is streamed: frames are decoded, processed and handed to the
output (encoder and mask packer) one at a time, and the runtime holds only a small window
(three input frames for restoration, ``radius + 2`` restored frames for stabilisation), so
memory does not grow with the clip length. Steps for each frame:

1. frames larger than :data:`MAX_WORK_PIXELS` (e.g. 4K) are downscaled for the models
   and the result is scaled back up (bicubic), so memory stays bounded;
2. tooth masks: the bundled SAM-architecture model in its automatic mode (no prompt;
   see :meth:`~dicom_service.vision.tooth_predictor.ToothSegmenter.automatic`) on every
   frame (or every ``segment_every``-th), or the masks the caller gives (a dentist's
   corrected Segmentation, so that the restoration follows the correction);
3. optical flow frame ``t`` → ``t - 1`` (and ``t`` → ``t + 1`` for a bidirectional
   restoration model) with OpenCV DIS on the degraded frames;
4. restoration with the previous (and next) frame's features warped by the flow
   (:class:`~dicom_service.vision.restoration_model.FrameRestorer`);
5. optional stabilisation of the restored frames (camera path smoothing, the same code
   as the classical baseline, run as a stream by
   :class:`~dicom_service.vision.stabilisation.StreamStabiliser`; the camera path is
   known up to the current frame, and each frame leaves once ``radius`` later ones
   have arrived);
6. optional interframe enhancement: x2 frame interpolation (learned, flow-guided) and
   x2 super-resolution (learned; only for frames processed at their own size, so up to
   1280x720; a video whose doubled frames would exceed 1920x1080, the most H.264 Level
   4.2 carries, is brought down to that size after super-resolution, so a 1280x720
   video comes back at 1920x1080).

Masks are returned on the input frames, at the input size.

The steps run as five stages, each in its own thread and handing frames on through small
queues (:mod:`~dicom_service.vision.stage_threads`): ``prepare`` (decoding, downscaling,
the DIS flows and the tooth model's resize), ``segment`` (the tooth model), ``restore``
(the caller's thread), ``stabilise`` and ``write`` (interpolation, super-resolution, the
sink). A clip then goes at the pace of the slowest stage rather than of their sum
(:attr:`LearnedVideoRuntime.last_stage_seconds` says how long each worked); every stage
sees the frames in order, so the results are those of running them one after the other.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from dicom_service.domain import AlgorithmInfo, EnhancementOutcome, VideoEnhancement
from dicom_service.media.video import h264_frame_step, h264_size
from dicom_service.vision.bundle_names import INTERP_BUNDLE, NOPRIOR_BUNDLE, RESTORATION_BUNDLE, SAM_BUNDLE, SR_BUNDLE
from dicom_service.vision.interframe import (
    FrameInterpolator2x,
    SuperResolution2x,
    interpolate_pair,
    load_interframe_bundle,
    upscale_frame,
)
from dicom_service.vision.mask_propagation import is_keyframe, warp_to_next
from dicom_service.vision.optical_flow import DisFlow
from dicom_service.vision.precision import compile_for_inference, for_inference, inference_dtype, precision_name
from dicom_service.vision.restoration_model import FrameRestorer, load_restoration_bundle
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
from dicom_service.vision.stage_threads import Handoff, StageThreads
from dicom_service.vision.tooth_predictor import ToothSegmenter
from dicom_service.vision.tooth_sam import load_sam_bundle

log = logging.getLogger(__name__)

NAME = "iars-sam-prior-motion-restoration"
#: The algorithm name when the restoration runs without the tooth prior (``prior=False``).
NAME_NOPRIOR = "motion-restoration-without-tooth-prior"
#: Frames with more pixels than this are processed downscaled (1280x720).
MAX_WORK_PIXELS = 1280 * 720
#: Items each queue between two stages of the stream holds (:mod:`~dicom_service.vision.stage_threads`).
STAGE_DEPTH = 1


#: Peak activations per working pixel of the tooth model, the restoration network and its
#: DIS flows on their first frames (the allocator keeps what they free): measured 500-526 B
#: at 640x480 and 1280x720 (``python -m benchmarks.video_memory --stages``).
RESTORATION_BYTES_PER_PIXEL = 576
#: The same for x2 interpolation, per output pixel: measured 355-367 B.
INTERPOLATION_BYTES_PER_PIXEL = 416
#: The same for x2 super-resolution, per pixel of its input: measured 612-669 B.
SUPER_RESOLUTION_BYTES_PER_PIXEL = 736


def _work_size(height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` the models run at: the input size, or scaled down to MAX_WORK_PIXELS."""
    pixels = height * width
    if pixels <= MAX_WORK_PIXELS:
        return height, width
    factor = (MAX_WORK_PIXELS / pixels) ** 0.5
    return max(16, int(height * factor)), max(16, int(width * factor))


def _output_size(count: int, height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` of the enhanced frames before the x2 options: the input size, except that a
    video (``count >= 2``) larger than H.264 Level 4.2 carries comes back at the largest size
    within 1920x1080 (:func:`~dicom_service.media.video.h264_size`); a still keeps its size."""
    if count < 2:
        return height, width
    fit_w, fit_h = h264_size(width, height)
    return fit_h, fit_w


def _super_resolution_size(count: int, scaled: bool, height: int, width: int) -> tuple[tuple[int, int] | None, str]:
    """Where x2 super-resolution of output frames ``height x width`` takes them: ``((h, w),
    "")`` with ``(h, w)`` the doubled size, or for a video whose doubled frames would exceed
    1920x1080 the largest size within it (the x2 result is then area-downscaled to it: a
    1280x720 video comes back at 1920x1080); ``(None, why)`` where it brings nothing (the
    frames were processed downscaled, or the video is already at 1920x1080)."""
    if scaled:
        return None, "x2 super-resolution not applied: the frames were processed downscaled"
    fitted = _output_size(count, 2 * height, 2 * width)
    if fitted[0] * fitted[1] <= height * width:
        return None, (f"x2 super-resolution not applied: {width}x{height} is already the most "
                      "H.264 Level 4.2 carries (1920x1080)")
    return fitted, ""


class _Geometry(NamedTuple):
    """How :class:`LearnedVideoRuntime` processes a clip; sizes are ``(h, w)``."""

    work: tuple[int, int]  # the models' size
    scaled: bool  # work != source size
    output: tuple[int, int]  # the enhanced frames' size before the x2 options
    upscaled: tuple[int, int] | None  # where super-resolution takes them (None: not applied)
    skipped: str  # why super-resolution is not applied, if it was asked for ("" otherwise)


def automatic_mask(segmenter: ToothSegmenter, frame: np.ndarray, resized: np.ndarray | None = None) -> np.ndarray:
    """Automatic-mode tooth mask ``(H, W)`` bool of a frame ``(H, W, 3)`` uint8 RGB
    (``resized``: :meth:`ToothSegmenter.resize` of it, if the caller has it already)."""
    segmenter.set_image(frame, resized)
    return segmenter.automatic().mask


def automatic_masks(segmenter: ToothSegmenter, frames: np.ndarray,
                    on_frame: Callable[[int], None] | None = None) -> np.ndarray:
    """Automatic-mode tooth masks ``(T, H, W)`` bool of frames ``(T, H, W, 3)`` uint8 RGB;
    ``on_frame(t)`` is called after frame ``t`` (progress; may raise to abort)."""
    masks = np.zeros(frames.shape[:3], dtype=bool)
    for t, frame in enumerate(frames):
        masks[t] = automatic_mask(segmenter, frame)
        if on_frame is not None:
            on_frame(t)
    return masks


class _Prepared(NamedTuple):
    """A frame of the stream made ready for segmentation (the ``prepare`` stage)."""

    work: np.ndarray  # (h, w, 3) uint8 RGB at the models' size
    sam_input: np.ndarray | None  # work resized for the tooth model (ToothSegmenter.resize); None: not a keyframe
    back_flow: np.ndarray | None  # (h, w, 2) float32 (x, y) DIS flow t -> t - 1; None for the first frame
    ahead_flow: np.ndarray | None  # DIS flow t - 1 -> t (the previous frame's next flow); bidirectional only


class _Segmented(NamedTuple):
    """A frame with its automatic tooth mask (the ``segment`` stage)."""

    work: np.ndarray
    mask: np.ndarray  # (h, w) bool at the models' size
    source_mask: np.ndarray  # (H, W) bool at the source size
    back_flow: np.ndarray | None
    ahead_flow: np.ndarray | None


def _prepare_frames(frames: Iterable[np.ndarray], work_size: tuple[int, int], scaled: bool,
                    segmenter: ToothSegmenter | None, bidirectional: bool, segment_every: int,
                    out: Handoff[_Prepared]) -> None:
    """Stage: each source frame ``(H, W, 3)`` uint8 RGB brought to ``work_size`` ``(h, w)``
    (and, on the tooth model's keyframes, every ``segment_every``-th frame and scene cuts,
    to its input size; never when ``segmenter`` is None: the masks are given), with its
    DIS flows to the previous frame (and from it, for a bidirectional restoration model)."""
    dis = DisFlow()
    previous: np.ndarray | None = None
    previous_grey: np.ndarray | None = None
    for t, frame in enumerate(frames):
        work = cv2.resize(frame, work_size[::-1], interpolation=cv2.INTER_AREA) if scaled \
            else np.ascontiguousarray(frame)
        grey = dis.grey(work)  # once per frame: it serves both flows here and the next frame's
        back = ahead = None
        if previous_grey is not None:
            size = (int(work.shape[0]), int(work.shape[1]))
            back = dis.between(grey, previous_grey, size)
            ahead = dis.between(previous_grey, grey, size) if bidirectional else None
        sam_input = None
        if segmenter is not None and is_keyframe(t, segment_every, work, previous, back):
            sam_input = segmenter.resize(work)
        out.put(_Prepared(work, sam_input, back, ahead))
        previous, previous_grey = work, grey
    out.close()


def _segment_frames(prepared: Handoff[_Prepared], segmenter: ToothSegmenter, source_size: tuple[int, int],
                    out: Handoff[_Segmented]) -> None:
    """Stage: the automatic tooth mask of each prepared frame, at the working and at the
    source size ``(H, W)``: the tooth model's on keyframes, the previous mask carried by the
    frame's flow on the others (:func:`~dicom_service.vision.mask_propagation.warp_to_next`)."""
    mask: np.ndarray | None = None
    for item in prepared:
        if item.sam_input is not None or mask is None or item.back_flow is None:
            mask = automatic_mask(segmenter, item.work, item.sam_input)
        else:
            mask = warp_to_next(mask, item.back_flow)
        source_mask = mask if mask.shape == source_size else \
            cv2.resize(mask.view(np.uint8), source_size[::-1], interpolation=cv2.INTER_NEAREST).view(bool)
        out.put(_Segmented(item.work, mask, source_mask, item.back_flow, item.ahead_flow))
    out.close()


def _given_masks(prepared: Handoff[_Prepared], masks: Iterable[np.ndarray], source_size: tuple[int, int],
                 out: Handoff[_Segmented]) -> None:
    """Stage in place of :func:`_segment_frames` when the caller gives the tooth masks (a
    dentist's corrected Segmentation): each prepared frame takes the next of ``masks``,
    ``(H, W)`` bool at the source size ``source_size``, brought to the working size.

    Raises
    ------
    ValueError
        A mask of another size, or fewer masks than frames.
    """
    given = iter(masks)
    for t, item in enumerate(prepared):
        source_mask = next(given, None)
        if source_mask is None:
            raise ValueError(f"the given tooth masks end at frame {t}, before the clip does")
        source_mask = np.asarray(source_mask).astype(bool, copy=False)
        if source_mask.shape != source_size:
            raise ValueError(f"given tooth mask {t} is {source_mask.shape}, the frames are {source_size}")
        work_size = item.work.shape[:2]
        mask = source_mask if work_size == source_size else \
            cv2.resize(source_mask.view(np.uint8), work_size[::-1], interpolation=cv2.INTER_NEAREST).view(bool)
        out.put(_Segmented(item.work, mask, source_mask, item.back_flow, item.ahead_flow))
    out.close()


class LearnedVideoRuntime:
    """Implements :class:`~dicom_service.vision.runtime.VideoRuntime` with the bundled models.

    Parameters
    ----------
    models_dir : Path
        Folder holding the ``video_restoration`` (or ``video_restoration_noprior``) and
        ``tooth_sam`` bundles.
    device : str
        ``"cpu"`` or ``"cuda[:N]"`` (resolved by the registry).
    stabilise : bool
        Remove handpiece shake after restoration (ignored for single frames).
    smoothing_seconds : float
        Camera-path moving-average length.
    upscale : bool
        x2 super-resolution of the output (inputs up to :data:`MAX_WORK_PIXELS` only; a
        video's result is brought within 1920x1080, see :func:`_super_resolution_size`).
    interpolate : bool
        x2 frame rate (a learned frame between each pair; videos only).
    prior : bool
        Restore with the tooth-prior model (``video_restoration``, seed 000's design, the
        default); False uses ``video_restoration_noprior`` (whole frame only). The tooth
        masks are segmented either way: they are the Segmentation output.
    precision : str
        Compute precision of the restoration network (:mod:`~dicom_service.vision.precision`):
        ``auto`` (float16 on CUDA, bfloat16 on a CPU with native bfloat16, else float32),
        ``float32``, ``bfloat16`` or ``float16`` (CUDA only).
    compile_models : bool
        ``torch.compile`` the restoration network and the tooth model's image encoder
        (:func:`~dicom_service.vision.precision.compile_for_inference`).
    segment_every : int
        Run the tooth model on every ``segment_every``-th frame of a clip (1: every frame)
        and carry its mask to the frames between by the DIS flow the restoration computes
        anyway (a speed option: the tooth model is the slowest stage of the stream on a GPU).

    Raises
    ------
    FileNotFoundError, ValueError
        A bundle is missing or does not load (see the bundle loaders), or a precision
        this device cannot run.
    """

    def __init__(self, models_dir: Path, device: str = "cpu", *, stabilise: bool = True,
                 smoothing_seconds: float = DEFAULT_SMOOTHING_SECONDS, upscale: bool = False, interpolate: bool = False,
                 prior: bool = True, precision: str = "auto", compile_models: bool = False,
                 segment_every: int = 1) -> None:
        if smoothing_seconds <= 0:
            raise ValueError(f"smoothing_seconds must be > 0, got {smoothing_seconds}")
        if segment_every < 1:
            raise ValueError(f"segment_every must be >= 1, got {segment_every}")
        self.segment_every = int(segment_every)
        self.device = torch.device(device)
        self.dtype = inference_dtype(self.device, precision)
        bundle = RESTORATION_BUNDLE if prior else NOPRIOR_BUNDLE
        restorer, restoration_config = load_restoration_bundle(models_dir / bundle, self.device)
        self.restorer = for_inference(restorer)
        if compile_models:
            compile_for_inference(self.restorer, ("forward", "frame_features"))
        sam, sam_config = load_sam_bundle(models_dir / SAM_BUNDLE, self.device)
        if compile_models:
            compile_for_inference(sam.image_encoder)
        self.segmenter = ToothSegmenter(sam)
        self.stabilise = stabilise
        #: Seconds each stage of the last :meth:`enhance_stream` worked, its waits left out
        #: (``prepare``: decoding and flows; ``segment``; ``restore``; ``stabilise``; ``write``).
        self.last_stage_seconds: dict[str, float] = {}
        self.upscaler: SuperResolution2x | None = None
        self.interpolator: FrameInterpolator2x | None = None
        if upscale:
            self.upscaler = load_interframe_bundle(models_dir / SR_BUNDLE, self.device)[0]
        if interpolate:
            self.interpolator = load_interframe_bundle(models_dir / INTERP_BUNDLE, self.device)[0]
        self.smoothing_seconds = smoothing_seconds
        #: The bundles' config.json documents (provenance: training command, sha256, metrics).
        self.configs = {"restoration": restoration_config, "sam": sam_config}
        versions = (restoration_config["weights"]["sha256"][:12], sam_config["weights"]["sha256"][:12])
        self.info = AlgorithmInfo(
            name=NAME if self.restorer.config.use_prior else NAME_NOPRIOR,
            version=f"restoration-{versions[0]}+sam-{versions[1]}", family="ai",
            parameters=(f"stabilise={stabilise} smoothing_s={smoothing_seconds} upscale={upscale} "
                        f"interpolate={interpolate} device={self.device.type} "
                        f"precision={precision_name(self.dtype)} compiled={compile_models} "
                        f"segment_every={self.segment_every}"),
        )

    @property
    def uses_tooth_masks(self) -> bool:
        """Whether the restoration is guided by the tooth masks (the prior model), so that
        masks given to :meth:`enhance_stream` (a dentist's correction) change its result."""
        return bool(self.restorer.config.use_prior)

    def _steps(self, scaled: bool, stabilised: bool, count: int, interpolated: bool,
               upscaled: tuple[int, int] | None, source: tuple[int, int], output: tuple[int, int],
               skipped: Sequence[str] = (), given_masks: bool = False) -> list[str]:
        """Provenance lines; ``source`` and ``output`` are ``(height, width)`` before the x2
        options, ``upscaled`` the size super-resolution brings frames to (None: not applied),
        ``given_masks`` whether the caller gave the tooth masks."""
        if given_masks:
            steps = ["Tooth masks: given (a corrected Segmentation), not segmented by the node"]
        else:
            steps = ["Tooth masks: SAM-architecture model, automatic mode (prompt-free decoding)"
                     + (f" on one frame in {self.segment_every} and on scene cuts, masks carried to the frames "
                        "between by optical flow" if self.segment_every > 1 and count >= 2 else "")]
        if scaled and output == source:
            steps.append(f"Processed downscaled to at most {MAX_WORK_PIXELS} pixels, result upscaled (bicubic)")
        elif scaled:
            steps.append(f"Processed downscaled to at most {MAX_WORK_PIXELS} pixels; the {source[1]}x{source[0]} "
                         f"video's result scaled to {output[1]}x{output[0]} (bicubic), the most an H.264 Level 4.2 "
                         "video carries (tooth masks at the source size)")
        both = self.restorer.config.bidirectional
        if count >= 2:
            steps.append("Optical flow: OpenCV DIS, frame to previous" + (" and to next frame" if both else " frame"))
        network = ("dual-branch network (tooth region + whole frame, fused features)" if self.restorer.config.use_prior
                   else "whole-frame network without the tooth prior")
        if count >= 2:
            steps.append(f"Restoration: {network}, "
                         + ("previous- and next-frame" if both else "previous-frame")
                         + " features aligned by flow with channel attention")
        else:
            steps.append(f"Restoration: {network}, a single frame (no neighbouring frames to align)")
        if stabilised:
            steps.append(stabilisation_step(self.smoothing_seconds))
        if interpolated:
            steps.append("Frame rate doubled: learned flow-guided frame interpolation")
        if upscaled == (2 * output[0], 2 * output[1]):
            steps.append("Resolution doubled: learned x2 super-resolution")
        elif upscaled is not None:
            steps.append(f"Resolution raised to {upscaled[1]}x{upscaled[0]}: learned x2 super-resolution, then "
                         "downscaled (area) to the most an H.264 Level 4.2 video carries (1920x1080)")
        steps.extend(skipped)
        return steps

    def _geometry(self, count: int, height: int, width: int) -> _Geometry:
        """How a clip of ``count`` frames ``height x width`` is processed (sizes ``(h, w)``)."""
        work = _work_size(height, width)
        scaled = work != (height, width)
        output = _output_size(count, height, width) if scaled else (height, width)
        upscaled, skipped = None, ""
        if self.upscaler is not None:
            upscaled, skipped = _super_resolution_size(count, scaled, *output)
        return _Geometry(work, scaled, output, upscaled, skipped)

    def compute_bytes(self, count: int, height: int, width: int, fps: float) -> int:
        """Network activations (see :class:`VideoRuntime`): per working pixel, the tooth
        model and the restoration with its flows (:data:`RESTORATION_BYTES_PER_PIXEL`); per
        output pixel, the interpolator (:data:`INTERPOLATION_BYTES_PER_PIXEL`) and the
        super-resolution network (:data:`SUPER_RESOLUTION_BYTES_PER_PIXEL`) where they run."""
        (work_h, work_w), _, (out_h, out_w), upscaled, _ = self._geometry(count, height, width)
        total = RESTORATION_BYTES_PER_PIXEL * work_h * work_w
        if self.interpolator is not None and count >= 2:
            total += INTERPOLATION_BYTES_PER_PIXEL * out_h * out_w
        if upscaled is not None:
            total += SUPER_RESOLUTION_BYTES_PER_PIXEL * out_h * out_w
        return total

    def working_bytes(self, count: int, height: int, width: int, fps: float) -> int:
        """Peak bytes :meth:`enhance_stream` holds (see :class:`VideoRuntime`).

        The clip streams through, so what it holds does not grow with its length except
        for two motion rows per frame. The stages hand frames on through queues of
        :data:`STAGE_DEPTH` items; counting the item its producer is making and the one its
        consumer is using, each queue accounts for ``STAGE_DEPTH + 2`` items (or the clip's
        frames, if fewer: a photograph's single frame is in one place at a time):

        - the source frame being read (3 bytes per source pixel) and its mask (1);
        - frames prepared for segmentation: the working frame (3 bytes per working pixel)
          and its DIS flows (8 each: to the previous frame, and from it for a
          bidirectional model);
        - segmented frames, the restoration's two among them: the same plus the mask (1);
        - restored frames and the masks on their way to the stabiliser and on to the sink
          (two queues; 3 bytes per output pixel, 1 per source pixel);
        - the restored frames the stabiliser holds until the camera path ``radius`` frames
          ahead is known (``radius + 2`` output frames);
        - for interpolation two more output frames, for super-resolution one frame of four
          times the size (12 per output pixel).
        """
        (work_h, work_w), _, (out_h, out_w), upscaled_size, _ = self._geometry(count, height, width)
        source, work = height * width, work_h * work_w
        output = 3 * out_h * out_w  # RGB bytes of one output frame before the x2 options
        flows = 8 * (2 if self.restorer.config.bidirectional else 1)
        in_flight = min(STAGE_DEPTH + 2, count)  # never more items than the clip has frames
        held = 4 * source + in_flight * ((3 + flows) + (4 + flows)) * work + 2 * in_flight * (output + source)
        held += min(smoothing_radius(fps, count, self.smoothing_seconds) + 2, count) * output
        if self.interpolator is not None and count >= 2:
            held += 2 * output
        if upscaled_size is not None:
            held += 4 * output
            if upscaled_size != (2 * out_h, 2 * out_w):
                held += 3 * upscaled_size[0] * upscaled_size[1]
        return held + count * 2 * 3 * 8

    def enhance(self, frames: np.ndarray, fps: float, progress: Progress | None = None, *,
                masks: np.ndarray | None = None) -> VideoEnhancement:
        """Segment teeth, restore and (optionally) stabilise a clip held in memory
        (:meth:`enhance_stream` over its frames).

        Parameters
        ----------
        frames : np.ndarray
            ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``, H, W >= 16.
        fps : float
            Frame rate (> 0; 1.0 for a still photograph).
        progress : callable or None
            Receives about one line per second; checked after every frame, so an
            exception it raises (the worker's shutdown) stops the work within a frame.
        masks : np.ndarray or None
            ``(T, H, W)`` bool tooth masks to restore with instead of segmenting (see
            :meth:`enhance_stream`); they are also the returned masks.

        Returns
        -------
        VideoEnhancement
            Frames ``(T', H', W', 3)`` uint8 (the input size and count unless
            interpolation (``T' = 2T - 1``, fps doubled) or super-resolution (``2H x 2W``)
            is on; a video (``T >= 2``) processed downscaled comes back at most 1920x1080;
            H.264 Level 4.2 carries at most 1920x1080 at 60 fps, so interpolation that would
            exceed 60 fps is skipped, and super-resolution of a video whose doubled frames
            would exceed 1920x1080 stops at the largest size within it or, where that is no
            gain, is skipped; a step says which), tooth masks ``(T, H, W)`` bool on
            the input frames, metrics
            ``tooth_area_fraction``, ``shake_px_before``, ``shake_px_after``, ``seconds``,
            ``frames_per_second``.

        Raises
        ------
        ValueError
            Frames not ``(T, H, W, 3)`` uint8 with ``T >= 1`` and H, W >= 16, or fps <= 0.
        """
        check_clip(frames, fps)
        if masks is not None and masks.shape != frames.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not match the frames {frames.shape[:3]}")
        sink = CollectingSink()
        return sink.result(self.enhance_stream(iter(frames), frames.shape[0], fps, sink, progress,
                                               masks=None if masks is None else iter(masks)))

    def enhance_stream(self, frames: Iterable[np.ndarray], count: int, fps: float, sink: EnhancementSink,
                       progress: Progress | None = None, *,
                       masks: Iterable[np.ndarray] | None = None) -> EnhancementOutcome:
        """:meth:`enhance` for a clip that arrives one frame at a time (see
        :class:`VideoRuntime`): each frame is segmented and restored as soon as the next
        one is in, and written to ``sink`` once the camera path ``radius`` frames ahead is
        known, so memory does not grow with the clip; the frames and masks are those
        :meth:`enhance` returns, bit for bit.

        ``masks`` (one ``(H, W)`` bool per frame, at the frames' size, in order) replaces
        the tooth model: the restoration is guided by these masks (a dentist's corrected
        Segmentation) and they go to ``sink`` as the clip's masks; the stream is otherwise
        the same.

        Raises
        ------
        ValueError
            See :func:`~dicom_service.vision.runtime.checked_stream`; a given mask of
            another size, or fewer given masks than frames.
        """
        started = time.perf_counter()
        source_frames = checked_stream(frames, count, fps)
        first = next(source_frames)
        height, width = first.shape[:2]
        work_size, scaled, (out_h, out_w), upscaled_size, sr_skipped = self._geometry(count, height, width)
        output_size = _output_size(count, height, width)
        radius = smoothing_radius(fps, count, self.smoothing_seconds)
        stabilised = self.stabilise and count >= 2
        out_fps = float(fps)
        skipped: list[str] = []
        interpolated = self.interpolator is not None and count >= 2
        if interpolated and h264_frame_step(2.0 * fps) > 1:
            interpolated = False
            skipped.append(f"x2 frame interpolation not applied: {2.0 * fps:g} fps would exceed H.264 Level 4.2 "
                           "(60 fps)")
        if interpolated:
            out_fps *= 2.0
        if sr_skipped:
            skipped.append(sr_skipped)
        sink.start(out_fps)
        chain = _OutputChain(self, sink, count, radius, (out_h, out_w), stabilised,
                             self.interpolator if interpolated else None,
                             self.upscaler if upscaled_size is not None else None, upscaled_size)
        tick = ProgressThrottle(progress)
        restorer = FrameRestorer(self.restorer, self.device, self.dtype)
        segmenter = self.segmenter.sibling()  # its own cached image: streams may run at once
        tooth_pixels = 0
        window: list[_Segmented] = []  # frames t and t + 1

        def restore(t: int) -> None:
            """Restore frame ``t``: ``window[-2]`` while frame ``t + 1`` is ``window[-1]``,
            ``window[-1]`` for the last frame."""
            here = -2 if t + 1 < count else -1
            current = window[here]
            upcoming = window[-1] if here == -2 else None
            restored = restorer.restore(current.work, current.mask, current.back_flow if t > 0 else None,
                                        (upcoming.work, upcoming.mask) if upcoming is not None else None,
                                        upcoming.ahead_flow if upcoming is not None else None)
            if scaled:
                restored = cv2.resize(restored, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
            to_output.put(("frame", restored))
            tick(f"restored {t + 1}/{count} frames")

        # decode + flows, segmentation, (restoration here), stabilisation, writing: each in
        # its own thread, so that a frame costs the slowest stage, not their sum
        with StageThreads(STAGE_DEPTH) as stages:
            prepared: Handoff[_Prepared] = stages.handoff()
            segmented: Handoff[_Segmented] = stages.handoff()
            to_output: Handoff[tuple[str, np.ndarray]] = stages.handoff()
            to_sink: Handoff[tuple[str, np.ndarray]] = stages.handoff()
            stages.start("prepare", lambda: _prepare_frames(itertools.chain([first], source_frames), work_size,
                                                            scaled, segmenter if masks is None else None,
                                                            self.restorer.config.bidirectional,
                                                            self.segment_every, prepared))
            if masks is None:
                stages.start("segment", lambda: _segment_frames(prepared, segmenter, (height, width), segmented))
            else:
                stages.start("segment", lambda: _given_masks(prepared, masks, (height, width), segmented))
            stages.start("stabilise", lambda: chain.stabilise_all(to_output, to_sink))
            stages.start("write", lambda: chain.write_all(to_sink))
            for t, item in enumerate(segmented):
                tooth_pixels += int(np.count_nonzero(item.source_mask))
                to_output.put(("mask", item.source_mask))
                window = [*window[-1:], item]
                if t >= 1:
                    restore(t - 1)
            restore(count - 1)
            to_output.close()
        # the caller's stage is restoration; the largest figure is the stage that set the pace
        self.last_stage_seconds = {("restore" if name == "caller" else name): round(value, 3)
                                   for name, value in stages.busy_seconds.items()}
        before, after = chain.finish()
        seconds = time.perf_counter() - started
        metrics = {"tooth_area_fraction": tooth_pixels / float(count * height * width),
                   "shake_px_before": shake_px(before, radius) if count >= 2 else 0.0,
                   "shake_px_after": shake_px(after if stabilised else before, radius) if count >= 2 else 0.0,
                   "seconds": seconds, "frames_per_second": count / max(seconds, 1e-9)}
        log.info("learned video runtime: %d frames %dx%d in %.2f s on %s (stages busy, s: %s)", count, width,
                 height, seconds, self.device.type, self.last_stage_seconds)
        return EnhancementOutcome(fps=out_fps, algorithm=self.info,
                                  steps=self._steps(scaled, stabilised, count, interpolated, upscaled_size,
                                                    (height, width), output_size, skipped, masks is not None),
                                  metrics=metrics)


class _OutputChain:
    """What follows restoration in :meth:`LearnedVideoRuntime.enhance_stream`, frame by
    frame: camera motion, stabilisation (holding ``radius + 1`` frames), x2 interpolation,
    x2 super-resolution, then the sink. :meth:`stabilise_all` and :meth:`write_all` run
    them as two stages (each in its own thread); the sink's calls all come from the second.
    Frames are ``(H, W, 3)`` uint8 RGB at the output size ``(out_h, out_w)``."""

    def __init__(self, runtime: LearnedVideoRuntime, sink: EnhancementSink, count: int, radius: int,
                 size: tuple[int, int], stabilised: bool, interpolator: FrameInterpolator2x | None,
                 upscaler: SuperResolution2x | None, upscaled_size: tuple[int, int] | None) -> None:
        self.runtime, self.sink, self.count = runtime, sink, count
        self.interpolator, self.upscaler, self.upscaled_size = interpolator, upscaler, upscaled_size
        self.before = np.zeros((count, 3), dtype=np.float64)
        self.after = np.zeros((count, 3), dtype=np.float64)
        self.motion = MotionEstimator(*size) if count >= 2 else None
        self.stabiliser = StreamStabiliser(count, radius) if stabilised else None
        self.stabilised_motion = MotionEstimator(*size) if stabilised else None
        self.interpolation_flow = DisFlow()
        self.pushed = self.written = 0
        self.last: np.ndarray | None = None

    def stabilise(self, restored: np.ndarray) -> list[np.ndarray]:
        """The next restored frame, in order; returns the frames ready to be written."""
        ready = [restored]
        if self.motion is not None:
            self.before[self.pushed] = self.motion.push(restored)
            if self.stabiliser is not None:
                ready = self.stabiliser.push(restored, self.before[self.pushed])
        self.pushed += 1
        return ready

    def write(self, frame: np.ndarray) -> None:
        """The next frame :meth:`stabilise` made ready: interpolation, super-resolution, sink."""
        if self.stabilised_motion is not None:
            self.after[self.written] = self.stabilised_motion.push(frame)
        self.written += 1
        if self.interpolator is not None and self.last is not None:
            self._emit(interpolate_pair(self.interpolator, self.last, frame, self.runtime.device,
                                        self.interpolation_flow))
        self.last = frame if self.interpolator is not None else None
        self._emit(frame)

    def stabilise_all(self, restored: Handoff[tuple[str, np.ndarray]], ready: Handoff[tuple[str, np.ndarray]]
                      ) -> None:
        """Stage: :meth:`stabilise` each ``("frame", restored)`` of ``restored`` and hand the
        frames it makes ready on to ``ready`` (``("mask", mask)`` items pass through)."""
        for kind, value in restored:
            if kind == "mask":
                ready.put((kind, value))
                continue
            for frame in self.stabilise(value):
                ready.put(("frame", frame))
        ready.close()

    def write_all(self, ready: Handoff[tuple[str, np.ndarray]]) -> None:
        """Stage: :meth:`write` each ready frame; masks go to the sink as they come."""
        for kind, value in ready:
            if kind == "mask":
                self.sink.mask(value)
            else:
                self.write(value)

    def _emit(self, frame: np.ndarray) -> None:
        if self.upscaler is not None:
            frame = upscale_frame(self.upscaler, frame, self.runtime.device)
            if frame.shape[:2] != self.upscaled_size:  # beyond 1920x1080: brought down to it
                frame = cv2.resize(frame, self.upscaled_size[::-1], interpolation=cv2.INTER_AREA)
        self.sink.frame(frame)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """After the last frame: the camera motion ``(T, 3)`` before and after stabilisation
        (:func:`~dicom_service.vision.stabilisation.estimate_motion` rows)."""
        if self.written != self.count:
            raise RuntimeError(f"{self.written} of {self.count} frames written")
        return self.before, self.after
