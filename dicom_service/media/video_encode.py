"""H.264 encoding of RGB frames into an MP4 (PyAV / libx264), whole clips or frame by frame.

:class:`H264Encoder` takes frames one at a time, so a long enhanced clip is never held
whole in memory; :func:`encode_h264_mp4` encodes an array with it. Frames are
``(H, W, 3)`` uint8 RGB ``[row, column, channel]``.
"""

from __future__ import annotations

import io
import logging
import tempfile
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import av
import numpy as np

from dicom_service.domain import MediaError
from dicom_service.media.video import H264_HP_L41, video_transfer_syntax_for

log = logging.getLogger(__name__)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height/width of ``(H, W, 3)`` by replicating the last row/column (yuv420p
    needs even sizes)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not pad_h and not pad_w:
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class H264Encoder:
    """Encode RGB frames one at a time as H.264 High Profile (libx264, yuv420p) in an MP4.

    The size is taken from the first frame; odd widths or heights are padded to the next
    even number by replicating the last column/row (4:2:0 chroma subsampling needs even
    sizes), so Rows/Columns must then give the padded size (:attr:`size`). Use as a context
    manager, or call :meth:`close` (which returns the file) or :meth:`abort`.

    Parameters
    ----------
    fps : float
        Frame rate (> 0); stored as a rational with denominator up to 1001 (29.97 becomes
        30000/1001).
    crf : int
        x264 constant rate factor (0-51, lower is better quality).
    faststart : bool
        Put the ``moov`` box before the media data so viewers can start playback before the
        whole file arrives. FFmpeg can only do this on a real file, so the stream is written
        to a temporary file and read back; with ``False`` it is written straight into memory
        (``moov`` at the end).

    Raises
    ------
    ValueError
        ``fps`` or ``crf`` out of range, or a frame of the wrong shape, dtype or size.
    MediaError
        A frame size or rate over H.264 Level 4.2, or an encoder failure.
    """

    def __init__(self, fps: float, *, crf: int = 20, faststart: bool = True) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        self.fps, self.crf, self.faststart = float(fps), crf, faststart
        #: ``(height, width)`` of the encoded (even) frames, once the first frame is in.
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._target: str | io.BytesIO | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    def _open(self, height: int, width: int) -> None:
        syntax = video_transfer_syntax_for(width, height, self.fps)
        level = "4.1" if syntax == H264_HP_L41 else "4.2"
        if self.faststart:
            self._tmp = tempfile.TemporaryDirectory(prefix="dicom-service-enc-")
            self._target = str(Path(self._tmp.name) / "clip.mp4")
            options = {"movflags": "faststart"}
        else:
            self._target, options = io.BytesIO(), {}
        self._container = av.open(self._target, mode="w", format="mp4", options=options)
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "veryfast", "profile": "high", "level": level}
        self._stream = stream
        self.size = (height, width)

    def add(self, frame: np.ndarray) -> None:
        """Encode the next frame ``(H, W, 3)`` uint8 RGB (every frame the first one's size)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        frame = np.ascontiguousarray(_pad_to_even(frame))
        try:
            if self._container is None:
                self._open(*frame.shape[:2])
            if frame.shape[:2] != self.size:
                raise ValueError(f"frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the clip "
                                 f"{self.size[1]}x{self.size[0]}")  # type: ignore[index]
            assert self._stream is not None and self._container is not None
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        except av.FFmpegError as exc:
            self.abort()
            raise MediaError(f"H.264 encoding failed: {exc}") from exc
        self.frames += 1

    def close(self) -> bytes:
        """Flush the encoder and return the MP4 file's bytes (:meth:`close_file`, read
        whole into memory; it raises the same errors)."""
        with self.close_file() as file:
            data = file.read()
        return data

    def close_file(self) -> BinaryIO:
        """Flush the encoder and return the MP4 as a file open for reading at its start,
        so that a long clip's video need not be held in memory. With ``faststart`` it is
        the temporary file itself, already removed from its folder (POSIX keeps its data
        until the file is closed, so nothing is left behind); else an in-memory buffer.

        Raises
        ------
        ValueError
            No frame was added.
        MediaError
            The encoder fails.
        """
        if self._container is None or self._stream is None:
            raise ValueError("no frame to encode")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            if isinstance(self._target, io.BytesIO):
                file: BinaryIO = self._target
                file.seek(0)
            else:
                file = open(str(self._target), "rb")  # noqa: SIM115 - handed to the caller
        except av.FFmpegError as exc:
            raise MediaError(f"H.264 encoding failed: {exc}") from exc
        finally:
            self.abort()
        size = file.seek(0, io.SEEK_END)
        file.seek(0)
        log.debug("encoded %d frames %dx%d at %.3f fps: %d bytes", self.frames, self.size[1], self.size[0],
                  self.fps, size)
        return file

    def abort(self) -> None:
        """Release the encoder and its temporary file (no-op once closed)."""
        if self._container is not None:
            try:
                self._container.close()
            except av.FFmpegError:
                pass
            self._container = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> H264Encoder:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.abort()


def encode_h264_mp4(frames: np.ndarray, fps: float, *, crf: int = 20, faststart: bool = True) -> bytes:
    """Encode RGB frames as H.264 High Profile (libx264, yuv420p) in an MP4 container
    (:class:`H264Encoder`; odd sizes are padded to even).

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``.
    fps, crf, faststart
        As for :class:`H264Encoder`.

    Returns
    -------
    bytes
        The MP4 file.

    Raises
    ------
    ValueError
        If ``frames`` has the wrong shape or dtype, or ``fps``/``crf`` are out of range.
    MediaError
        If the clip is too large for H.264 Level 4.2, or the encoder fails.
    """
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    with H264Encoder(fps, crf=crf, faststart=faststart) as encoder:
        for frame in frames:
            encoder.add(frame)
        return encoder.close()
