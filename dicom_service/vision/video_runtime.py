"""The learned video runtime: SAM tooth masks → prior-guided, motion-aware restoration.

Steps for a clip ``(T, H, W, 3)``:

1. frames larger than :data:`MAX_WORK_PIXELS` (e.g. 4K) are downscaled for the models
   and the result is scaled back up (bicubic), so memory stays bounded;
2. tooth masks: the bundled SAM-architecture model in its automatic mode (no prompt;
   see :meth:`~dicom_service.vision.tooth_predictor.ToothSegmenter.automatic`) on every
   frame;
3. optical flow frame ``t`` → ``t - 1`` (and ``t`` → ``t + 1`` for a bidirectional
   restoration model) with OpenCV DIS on the degraded frames;
4. restoration frame by frame with the previous (and next) frame's features warped by
   the flow (:func:`~dicom_service.vision.restoration_model.restore_clip`);
5. optional stabilisation of the restored frames (camera path smoothing, the same code
   as the classical baseline);
6. optional interframe enhancement: x2 frame interpolation (learned, flow-guided) and
   x2 super-resolution (learned; only for inputs up to 1280x720, so no output exceeds
   2560x1440).

Masks are returned on the input frames, at the input size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from dicom_service.domain import AlgorithmInfo, VideoEnhancement
from dicom_service.media.video import h264_frame_step, h264_size
from dicom_service.vision.bundle_names import INTERP_BUNDLE, NOPRIOR_BUNDLE, RESTORATION_BUNDLE, SAM_BUNDLE, SR_BUNDLE
from dicom_service.vision.interframe import (
    FrameInterpolator2x,
    SuperResolution2x,
    interpolate_clip,
    load_interframe_bundle,
    upscale_clip,
)
from dicom_service.vision.optical_flow import ClipFlows, DisFlow
from dicom_service.vision.precision import compile_for_inference, for_inference, inference_dtype, precision_name
from dicom_service.vision.restoration_model import load_restoration_bundle, restore_clip
from dicom_service.vision.runtime import Progress, ProgressThrottle, check_clip
from dicom_service.vision.stabilisation import (
    DEFAULT_SMOOTHING_SECONDS,
    estimate_motion,
    shake_px,
    smoothing_radius,
    stabilisation_step,
    stabilise,
)
from dicom_service.vision.tooth_predictor import ToothSegmenter
from dicom_service.vision.tooth_sam import load_sam_bundle

log = logging.getLogger(__name__)

NAME = "iars-sam-prior-motion-restoration"
#: The algorithm name when the restoration runs without the tooth prior (``prior=False``).
NAME_NOPRIOR = "motion-restoration-without-tooth-prior"
#: Frames with more pixels than this are processed downscaled (1280x720).
MAX_WORK_PIXELS = 1280 * 720


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


def _fits_video(count: int, height: int, width: int) -> bool:
    """Whether frames of ``height x width`` can be written: always for a still, within
    1920x1080 for a video."""
    return count < 2 or _output_size(count, height, width) == (height, width)


def _resize_stack(frames: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``(T, H, W[, C])`` → ``(T, h, w[, C])`` for ``size`` ``(h, w)``, into one new array."""
    h, w = size
    out = np.empty((frames.shape[0], h, w) + frames.shape[3:], dtype=frames.dtype)
    for t, frame in enumerate(frames):
        out[t] = cv2.resize(frame, (w, h), interpolation=interpolation)
    return out


def automatic_masks(segmenter: ToothSegmenter, frames: np.ndarray,
                    on_frame: Callable[[int], None] | None = None) -> np.ndarray:
    """Automatic-mode tooth masks ``(T, H, W)`` bool of frames ``(T, H, W, 3)`` uint8 RGB;
    ``on_frame(t)`` is called after frame ``t`` (progress; may raise to abort)."""
    masks = np.zeros(frames.shape[:3], dtype=bool)
    for t, frame in enumerate(frames):
        segmenter.set_image(frame)
        masks[t] = segmenter.automatic().mask
        if on_frame is not None:
            on_frame(t)
    return masks


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
        x2 super-resolution of the output (inputs up to :data:`MAX_WORK_PIXELS` only).
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
        ``torch.compile`` the restoration network
        (:func:`~dicom_service.vision.precision.compile_for_inference`).

    Raises
    ------
    FileNotFoundError, ValueError
        A bundle is missing or does not load (see the bundle loaders), or a precision
        this device cannot run.
    """

    def __init__(self, models_dir: Path, device: str = "cpu", *, stabilise: bool = True,
                 smoothing_seconds: float = DEFAULT_SMOOTHING_SECONDS, upscale: bool = False, interpolate: bool = False,
                 prior: bool = True, precision: str = "auto", compile_models: bool = False) -> None:
        if smoothing_seconds <= 0:
            raise ValueError(f"smoothing_seconds must be > 0, got {smoothing_seconds}")
        self.device = torch.device(device)
        self.dtype = inference_dtype(self.device, precision)
        bundle = RESTORATION_BUNDLE if prior else NOPRIOR_BUNDLE
        restorer, restoration_config = load_restoration_bundle(models_dir / bundle, self.device)
        self.restorer = for_inference(restorer)
        if compile_models:
            compile_for_inference(self.restorer, ("forward", "frame_features"))
        sam, sam_config = load_sam_bundle(models_dir / SAM_BUNDLE, self.device)
        self.segmenter = ToothSegmenter(sam)
        self.stabilise = stabilise
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
                        f"precision={precision_name(self.dtype)} compiled={compile_models}"),
        )

    def _steps(self, scaled: bool, stabilised: bool, count: int, interpolated: bool, upscaled: bool,
               source: tuple[int, int], output: tuple[int, int], skipped: Sequence[str] = ()) -> list[str]:
        """Provenance lines; ``source`` and ``output`` are ``(height, width)`` before x2 options."""
        steps = ["Tooth masks: SAM-architecture model, automatic mode (prompt-free decoding)"]
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
        steps.append(f"Restoration: {network}, "
                     + ("previous- and next-frame" if both else "previous-frame")
                     + " features aligned by flow with channel attention")
        if stabilised:
            steps.append(stabilisation_step(self.smoothing_seconds))
        if interpolated:
            steps.append("Frame rate doubled: learned flow-guided frame interpolation")
        if upscaled:
            steps.append("Resolution doubled: learned x2 super-resolution")
        steps.extend(skipped)
        return steps

    def working_bytes(self, count: int, height: int, width: int) -> int:
        """Peak bytes :meth:`enhance` holds beyond its input (see :class:`VideoRuntime`).

        Counted arrays, per frame: the tooth masks (1 byte per pixel) and the restored
        frames (3) at the working size (flows are computed as they are read, stabilisation
        works in place). For an input over :data:`MAX_WORK_PIXELS` the peak comes later,
        when the results are scaled back up: the working masks (1 byte per working pixel)
        and the output frames (3 bytes per output pixel; a video's output is at most
        1920x1080), beside either the restored working frames (3 bytes per working pixel,
        while the frames are scaled) or the masks at the source size (1 byte per source
        pixel, while the masks are); more than the 7 per working pixel while restoring. The
        interpolated (``2T - 1`` frames) or super-resolved (``2H x 2W``) output comes on
        top, beside the frames it was made from (interpolation counted whatever the rate).
        """
        work_h, work_w = _work_size(height, width)
        source, work = height * width, work_h * work_w
        scaled = (work_h, work_w) != (height, width)
        out_h, out_w = _output_size(count, height, width) if scaled else (height, width)
        output = 3 * out_h * out_w  # RGB bytes of one output frame before the x2 options
        per_frame = work + output + max(3 * work, source) if scaled else 4 * work
        if self.interpolator is not None and count >= 2:
            per_frame += 2 * output
        if self.upscaler is not None and not scaled and _fits_video(count, 2 * out_h, 2 * out_w):
            per_frame += 4 * output
        return count * per_frame

    def enhance(self, frames: np.ndarray, fps: float, progress: Progress | None = None) -> VideoEnhancement:
        """Segment teeth, restore and (optionally) stabilise a clip.

        Parameters
        ----------
        frames : np.ndarray
            ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``, H, W >= 16.
        fps : float
            Frame rate (> 0; 1.0 for a still photograph).
        progress : callable or None
            Receives about one line per second; checked after every frame, so an
            exception it raises (the worker's shutdown) stops the work within a frame.

        Returns
        -------
        VideoEnhancement
            Frames ``(T', H', W', 3)`` uint8 (the input size and count unless
            interpolation (``T' = 2T - 1``, fps doubled) or super-resolution (``2H x 2W``)
            is on; a video (``T >= 2``) processed downscaled comes back at most 1920x1080,
            and the x2 options are skipped, with a step saying so, where their result would
            exceed 1920x1080 or 60 fps: H.264 Level 4.2), tooth masks ``(T, H, W)`` bool on
            the input frames, metrics
            ``tooth_area_fraction``, ``shake_px_before``, ``shake_px_after``, ``seconds``,
            ``frames_per_second``.

        Raises
        ------
        ValueError
            Frames not ``(T, H, W, 3)`` uint8 with ``T >= 1`` and H, W >= 16, or fps <= 0.
        """
        check_clip(frames, fps)
        started = time.perf_counter()
        count, height, width = frames.shape[:3]
        work_size = _work_size(height, width)
        scaled = work_size != (height, width)
        work = _resize_stack(frames, work_size, cv2.INTER_AREA) if scaled else np.ascontiguousarray(frames)
        tick = ProgressThrottle(progress)
        masks = automatic_masks(self.segmenter, work, lambda t: tick(f"tooth masks {t + 1}/{count} frames"))
        dis = DisFlow()
        # computed frame by frame as the restoration reads them: a clip's worth of flows
        # would cost several times the frames (ClipFlows)
        flows = ClipFlows(work, dis)
        following = ClipFlows(work, dis, step=1) if self.restorer.config.bidirectional else None
        restored = restore_clip(self.restorer, work, masks, flows, self.device, self.dtype,
                                on_frame=lambda t: tick(f"restored {t + 1}/{count} frames"), next_flows=following)
        del work, flows, following  # a downscaled copy is freed before the upscaled output is made
        output_size = _output_size(count, height, width)
        if scaled:  # a video comes back at most 1920x1080 (H.264 Level 4.2); the masks at the source size
            restored = _resize_stack(restored, output_size, cv2.INTER_CUBIC)
            masks = _resize_stack(masks.view(np.uint8), (height, width), cv2.INTER_NEAREST).view(bool)
        radius = smoothing_radius(fps, count, self.smoothing_seconds)
        stabilised = self.stabilise and count >= 2
        before = after = 0.0
        if count >= 2:
            motion = estimate_motion(restored)
            before = shake_px(motion, radius)
            if stabilised:
                restored = stabilise(restored, motion, radius, in_place=True)
                after = shake_px(estimate_motion(restored), radius)
            else:
                after = before
        out_fps = float(fps)
        skipped: list[str] = []
        interpolated = self.interpolator is not None and count >= 2
        if interpolated and h264_frame_step(2.0 * fps) > 1:
            interpolated = False
            skipped.append(f"x2 frame interpolation not applied: {2.0 * fps:g} fps would exceed H.264 Level 4.2 "
                           "(60 fps)")
        if interpolated:
            restored = interpolate_clip(self.interpolator, restored, self.device)
            out_fps *= 2.0
        upscaled = self.upscaler is not None and not scaled
        if upscaled and not _fits_video(count, 2 * restored.shape[1], 2 * restored.shape[2]):
            upscaled = False
            skipped.append(f"x2 super-resolution not applied: {2 * restored.shape[2]}x{2 * restored.shape[1]} "
                           "would exceed H.264 Level 4.2 (1920x1080)")
        if upscaled:
            restored = upscale_clip(self.upscaler, restored, self.device)
        seconds = time.perf_counter() - started
        metrics = {"tooth_area_fraction": float(masks.mean()), "shake_px_before": before,
                   "shake_px_after": after, "seconds": seconds, "frames_per_second": count / max(seconds, 1e-9)}
        log.info("learned video runtime: %d frames %dx%d in %.2f s on %s", count, width, height, seconds,
                 self.device.type)
        return VideoEnhancement(frames=restored, tooth_masks=masks, fps=out_fps, algorithm=self.info,
                                steps=self._steps(scaled, stabilised, count, interpolated, upscaled, (height, width),
                                                  output_size, skipped), metrics=metrics)
