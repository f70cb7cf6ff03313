"""Where a streamed clip's results go as the runtime makes them: enhanced frames into the
H.264 encoder (fitted to what H.264 Level 4.2 carries), tooth masks into packed
Segmentation bits. For a video both go to temporary files (the MP4 the encoder writes, the
packed bits a spool), which become the result objects' Pixel Data and are copied into the
stored files in chunks, so nothing here grows in memory with the clip.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO

import cv2
import numpy as np

from dicom_service.media.video import h264_fit_steps
from dicom_service.media.video_encode import H264Encoder
from dicom_service.writers.seg import MaskPacker


class VideoOutputSink:
    """An :class:`~dicom_service.vision.runtime.EnhancementSink` for the video workflow.

    For a video, frames larger than 1920x1080 are downscaled (area interpolation, aspect
    ratio kept) and rates above 60 fps thinned to one frame in ``step``
    (:func:`~dicom_service.media.video.h264_fit_steps`; :attr:`fitted` says so), then
    encoded at once. For a still, the one frame is kept as it is.

    Parameters
    ----------
    video : bool
        The source is a video (else a still photograph: one frame, no encoding).
    crf : int
        x264 constant rate factor.
    keep_masks : bool
        Pack the tooth masks (False: they are counted only, where the caller has them
        already, as when a video is restored again with a corrected Segmentation).
    """

    def __init__(self, *, video: bool, crf: int = 20, keep_masks: bool = True) -> None:
        self.video, self.crf, self.keep_masks = video, crf, keep_masks
        #: Tooth masks received (packed or not).
        self.mask_count = 0
        self.fps_in = 0.0
        self.frames_in = 0
        #: Processing-step lines for what the fit changed (set at the first frame).
        self.fitted: list[str] = []
        self.still: np.ndarray | None = None
        self.masks: MaskPacker | None = None
        self._encoder: H264Encoder | None = None
        self._size: tuple[int, int] | None = None  # (width, height) written
        self._step = 1

    def start(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps_in = float(fps)

    def frame(self, frame: np.ndarray) -> None:
        index, self.frames_in = self.frames_in, self.frames_in + 1
        if not self.video:
            if index > 0:
                raise ValueError("a still photograph has one enhanced frame")
            self.still = frame
            return
        if self._encoder is None:
            if not self.fps_in > 0:
                raise ValueError("start(fps) must come before the first frame")
            width, height, self._step, self.fitted = h264_fit_steps(frame.shape[1], frame.shape[0], self.fps_in)
            self._size = (width, height)
            self._encoder = H264Encoder(self.fps_in / self._step, crf=self.crf)
        if index % self._step:
            return
        if self._size != (frame.shape[1], frame.shape[0]):
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._encoder.add(frame)

    def mask(self, mask: np.ndarray) -> None:
        self.mask_count += 1
        if not self.keep_masks:
            return
        if self.masks is None:
            spool = tempfile.TemporaryFile(prefix="dicom-service-seg-") if self.video else None  # noqa: SIM115
            self.masks = MaskPacker(*mask.shape, spool=spool)
        self.masks.add(mask)

    def finish(self) -> tuple[BinaryIO, int, tuple[int, int], float]:
        """Close the encoder: the MP4 (a file open at its start, see
        :meth:`~dicom_service.media.video_encode.H264Encoder.close_file`), its frame count,
        its (even) ``(rows, columns)`` and fps.

        Raises
        ------
        ValueError
            Not a video, or no frame came.
        """
        if self._encoder is None or self._encoder.size is None:
            raise ValueError("no enhanced video frames to encode")
        frames, size = self._encoder.frames, self._encoder.size
        return self._encoder.close_file(), frames, size, self._encoder.fps

    def abort(self) -> None:
        """Release the encoder and the mask spool after a failure."""
        if self._encoder is not None:
            self._encoder.abort()
        if self.masks is not None and self.masks.spool is not None:
            self.masks.spool.close()
