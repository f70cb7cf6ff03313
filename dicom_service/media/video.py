"""Video decode and encode for DICOM video objects (PyAV / FFmpeg).

pydicom cannot decode MPEG bitstreams, so for the MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265
transfer syntaxes the encapsulated bitstream (normally an MP4 or MPEG-TS container in
one fragment, PS3.5 8.2.5-8.2.7) is handed to PyAV. Every other transfer syntax
(VL Photographic JPEG, native multi-frame true colour SC, ...) goes through pydicom's
pixel decoders.

Frames are always returned as ``(T, H, W, 3)`` uint8 RGB, ``[frame, row, column,
channel]``.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.pixels import iter_pixels, pixel_array

from dicom_service.domain import MediaError, UnsupportedInputError
from dicom_service.media.pixels import DECODE_ERRORS, decode_error

log = logging.getLogger(__name__)

_TS_PREFIX = "1.2.840.10008.1.2.4."
#: MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 transfer syntaxes (with fragmentable ".1" forms).
MPEG_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    [_TS_PREFIX + s for s in ("100", "101", "102", "103", "104", "105", "106")]
    + [_TS_PREFIX + s + ".1" for s in ("100", "101", "102", "103", "104", "105", "106")]
    + [_TS_PREFIX + "107", _TS_PREFIX + "108"]
)
#: MPEG-4 AVC/H.264 High Profile / Level 4.1.
H264_HP_L41 = _TS_PREFIX + "102"
#: MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video.
H264_HP_L42_2D = _TS_PREFIX + "104"

# H.264 level limits (ITU-T H.264 Table A-1): max macroblocks per frame and per second.
_L41_MAX_FS, _L41_MAX_MBPS = 8192, 245760
_L42_MAX_FS, _L42_MAX_MBPS = 8704, 522240
_MAX_W, _MAX_H = 1920, 1080
_FPS_TOLERANCE = 0.01


def video_transfer_syntax_for(width: int, height: int, fps: float) -> str:
    """Choose the H.264 transfer syntax UID for a clip of the given geometry.

    Rule (PS3.5 8.2.7 and H.264 Annex A): frames at most 1920x1080 and at most
    30 fps that fit Level 4.1 take ``.102`` (High Profile / Level 4.1); frames at most
    1920x1080 up to 60 fps that fit Level 4.2 take ``.104`` (High Profile / Level 4.2
    For 2D Video).

    Parameters
    ----------
    width, height : int
        Frame size in pixels (columns, rows), after padding to even numbers.
    fps : float
        Frame rate.

    Returns
    -------
    str
        The transfer syntax UID.

    Raises
    ------
    MediaError
        If the clip exceeds Level 4.2 (larger than 1920x1080 or faster than 60 fps);
        it must then be downscaled or resampled first.
    """
    if width <= 0 or height <= 0 or fps <= 0:
        raise MediaError(f"invalid video geometry {width}x{height} at {fps} fps")
    mbs = ((width + 15) // 16) * ((height + 15) // 16)
    fits_frame = max(width, height) <= _MAX_W and min(width, height) <= _MAX_H
    if fits_frame and fps <= 30.0 + _FPS_TOLERANCE and mbs <= _L41_MAX_FS and mbs * fps <= _L41_MAX_MBPS:
        return H264_HP_L41
    if fits_frame and fps <= 60.0 + _FPS_TOLERANCE and mbs <= _L42_MAX_FS and mbs * fps <= _L42_MAX_MBPS:
        return H264_HP_L42_2D
    raise MediaError(
        f"{width}x{height} at {fps:.3f} fps exceeds H.264 High Profile Level 4.2; "
        "downscale to at most 1920x1080 and 60 fps"
    )


def h264_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` a frame must have to be written as H.264 High Profile Level 4.2:
    its own size when it fits 1920x1080 (either orientation); otherwise the largest size of
    the same aspect ratio that does, rounded down to even numbers."""
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid video geometry {width}x{height}")
    long_limit, short_limit = (_MAX_W, _MAX_H) if width >= height else (_MAX_H, _MAX_W)
    factor = min(1.0, long_limit / width, short_limit / height)
    if factor < 1.0:
        width, height = max(2, int(width * factor) // 2 * 2), max(2, int(height * factor) // 2 * 2)
    return width, height


def h264_frame_step(fps: float) -> int:
    """Keep every ``step``-th frame so that a clip at ``fps`` is at most 60 fps (1: all frames)."""
    if not fps > 0:
        raise ValueError(f"invalid frame rate {fps}")
    return max(1, math.ceil(fps / (60.0 + _FPS_TOLERANCE)))


def h264_fit(width: int, height: int, fps: float) -> tuple[int, int, int]:
    """How a clip must shrink to be written as H.264 High Profile Level 4.2.

    Parameters
    ----------
    width, height : int
        Frame size in pixels (columns, rows).
    fps : float
        Frame rate (> 0).

    Returns
    -------
    width, height : int
        :func:`h264_size`.
    step : int
        :func:`h264_frame_step`.
    """
    if width <= 0 or height <= 0 or not fps > 0:
        raise ValueError(f"invalid video geometry {width}x{height} at {fps} fps")
    return (*h264_size(width, height), h264_frame_step(fps))


def fit_frames_to_h264(frames: np.ndarray, fps: float) -> tuple[np.ndarray, float, list[str]]:
    """Downscale and/or thin out frames that H.264 Level 4.2 cannot carry (see :func:`h264_fit`).

    A DICOM H.264 video carries at most 1920x1080 at 60 fps; a 4K source, a x2
    super-resolved 1280x720 clip or a doubled 60 fps rate would otherwise fail to encode.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    fps : float
        Their frame rate.

    Returns
    -------
    frames : np.ndarray
        ``frames`` itself when it fits; else a new, smaller array (area interpolation).
    fps : float
        The rate of the returned frames.
    steps : list of str
        Processing-step lines for the provenance (empty when nothing changed).
    """
    height, width = frames.shape[1:3]
    new_width, new_height, step = h264_fit(width, height, fps)
    steps: list[str] = []
    if step > 1:
        frames = frames[::step]
        steps.append(f"One frame in {step} kept ({fps:g} to {fps / step:g} fps) to fit H.264 Level 4.2 (60 fps)")
        fps = fps / step
    if (new_width, new_height) != (width, height):
        out = np.empty((frames.shape[0], new_height, new_width, 3), dtype=np.uint8)
        for t, frame in enumerate(frames):
            out[t] = cv2.resize(frame, (new_width, new_height), interpolation=cv2.INTER_AREA)
        frames = out
        steps.append(f"Downscaled from {width}x{height} to {new_width}x{new_height} to fit H.264 Level 4.2 "
                     "(1920x1080), the largest a DICOM H.264 video carries")
    elif step > 1:
        frames = np.ascontiguousarray(frames)
    return frames, fps, steps


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by replicating the last row/column (yuv420p needs even sizes)."""
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _encode_into(target: str | io.BytesIO, frames: np.ndarray, fps: float, crf: int,
                 level: str, faststart: bool) -> None:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(target, mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "profile": "high", "level": level}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode_h264_mp4(frames: np.ndarray, fps: float, *, crf: int = 20, faststart: bool = True) -> bytes:
    """Encode RGB frames as H.264 High Profile (libx264, yuv420p) in an MP4 container.

    Odd widths or heights are padded to the next even number by replicating the last
    column/row, because 4:2:0 chroma subsampling needs even sizes; the caller must then
    write Rows/Columns of the *padded* size (``frames.shape[1] + frames.shape[1] % 2``).

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``.
    fps : float
        Frame rate (> 0); stored as a rational with denominator up to 1001
        (29.97 becomes 30000/1001).
    crf : int
        x264 constant rate factor (0-51, lower is better quality).
    faststart : bool
        Put the ``moov`` box before the media data so viewers can start playback
        before the whole file arrives. FFmpeg can only do this on a real file, so the
        stream is written to a temporary file and read back; with ``False`` it is
        written straight into memory (``moov`` at the end).

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
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    frames = np.ascontiguousarray(_pad_to_even(frames))
    ts = video_transfer_syntax_for(frames.shape[2], frames.shape[1], fps)
    level = "4.1" if ts == H264_HP_L41 else "4.2"
    try:
        if faststart:
            with tempfile.TemporaryDirectory(prefix="dicom-service-enc-") as tmp:
                path = Path(tmp) / "clip.mp4"
                _encode_into(str(path), frames, fps, crf, level, faststart=True)
                data = path.read_bytes()
        else:
            buffer = io.BytesIO()
            _encode_into(buffer, frames, fps, crf, level, faststart=False)
            data = buffer.getvalue()
    except av.FFmpegError as exc:
        raise MediaError(f"H.264 encoding failed: {exc}") from exc
    log.debug("encoded %d frames %dx%d at %.3f fps: %d bytes", frames.shape[0],
              frames.shape[2], frames.shape[1], fps, len(data))
    return data


def _snap_rate(fps: float) -> float:
    """Snap a rate computed from a rounded FrameTime to a common rate within 0.05 %."""
    for common in (24000 / 1001, 30000 / 1001, 60000 / 1001, float(round(fps))):
        if common > 0 and abs(fps - common) <= 5e-4 * common:
            return common
    return fps


def encapsulated_bitstream(pixel_data: bytes) -> bytes:
    """The concatenated fragments of encapsulated pixel data (Basic Offset Table skipped).

    For MPEG transfer syntaxes this is the whole MP4/MPEG-TS/elementary stream.

    Raises
    ------
    MediaError
        If the items are malformed or there is no non-empty fragment.
    """
    buffer = io.BytesIO(pixel_data)
    try:
        parse_basic_offsets(buffer)
        data = b"".join(generate_fragments(buffer))
    except (ValueError, TypeError) as exc:
        raise MediaError(f"encapsulated pixel data is malformed: {exc}") from exc
    if not data:
        raise MediaError("encapsulated pixel data has no fragment")
    return data


def _dataset_fps(ds: Dataset) -> float | None:
    """Frame rate from FrameTime (ms), RecommendedDisplayFrameRate or CineRate, if any."""
    frame_time = ds.get("FrameTime")
    if frame_time is not None and float(frame_time) > 0:
        return _snap_rate(1000.0 / float(frame_time))
    for keyword in ("RecommendedDisplayFrameRate", "CineRate"):
        value = ds.get(keyword)
        if value is not None and float(value) > 0:
            return float(value)
    return None


def _decode_bitstream(data: bytes, max_frames: int | None) -> tuple[np.ndarray, float | None]:
    """Decode a container/bitstream with PyAV into ``(T, H, W, 3)`` uint8 RGB."""
    out: list[np.ndarray] = []
    rate: float | None = None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("the video bitstream has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if stream.average_rate:
                rate = float(stream.average_rate)
            for frame in container.decode(stream):
                out.append(frame.to_ndarray(format="rgb24"))
                if out[-1].shape != out[0].shape:
                    raise MediaError(f"the frame size changes within the video stream ({out[0].shape[1]}x"
                                     f"{out[0].shape[0]}, then {out[-1].shape[1]}x{out[-1].shape[0]} at frame "
                                     f"{len(out)}); such streams are not supported")
                if max_frames is not None and len(out) >= max_frames:
                    break
    except av.FFmpegError as exc:
        raise MediaError(f"video bitstream cannot be decoded: {exc}") from exc
    if not out:
        raise MediaError("no frames decoded from the video bitstream")
    return np.stack(out), rate


def _to_rgb_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Convert decoded pixels ``(T, H, W)`` or ``(T, H, W, 3)`` to uint8 RGB."""
    if arr.ndim == 3:  # grayscale frames
        bits = int(ds.get("BitsStored", 8))
        if arr.dtype != np.uint8 or bits != 8:
            scale = 255.0 / float((1 << bits) - 1)
            arr = np.clip(arr.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            arr = 255 - arr
        return np.repeat(arr[..., None], 3, axis=3)
    if arr.dtype != np.uint8:
        raise UnsupportedInputError(f"colour frames with {arr.dtype} samples are not supported")
    return arr


def _decode_with_pydicom(ds: Dataset, max_frames: int | None) -> np.ndarray:
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    count = n_frames if max_frames is None else min(max_frames, n_frames)
    try:
        if count < n_frames:
            arr = np.stack(list(iter_pixels(ds, indices=range(count), as_rgb=True)))
        else:
            arr = pixel_array(ds, as_rgb=True)
            if n_frames == 1:
                arr = arr[None]
    except DECODE_ERRORS as exc:
        raise decode_error(exc) from exc
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples not in (1, 3):
        raise UnsupportedInputError(f"SamplesPerPixel {samples} is not supported")
    return _to_rgb_uint8(arr, ds)


def read_frames(ds: Dataset, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode the frames of a video or colour image instance.

    Parameters
    ----------
    ds : Dataset
        The instance, with ``file_meta.TransferSyntaxUID`` and ``PixelData``.
    max_frames : int, optional
        Stop after this many frames (``None``: all).

    Returns
    -------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB. For MPEG streams ``H``/``W`` are the coded size
        reported by the decoder.
    fps : float
        From FrameTime (most precise), RecommendedDisplayFrameRate or CineRate; else
        the stream's average rate; else 1.0 (stills).

    Raises
    ------
    MediaError
        No pixel data, or the bitstream/pixel data is corrupt, truncated or decodes to
        zero frames; an MPEG stream that yields fewer frames than NumberOfFrames
        declares is taken as truncated.
    UnsupportedInputError
        Pixel data that cannot be turned into RGB frames (e.g. 16-bit colour).
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if "PixelData" not in ds:
        raise MediaError("the instance has no pixel data")
    file_meta = getattr(ds, "file_meta", None)
    ts = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    stream_rate: float | None = None
    if ts in MPEG_TRANSFER_SYNTAXES:
        data = encapsulated_bitstream(ds.PixelData)
        frames, stream_rate = _decode_bitstream(data, max_frames)
        declared = int(ds.get("NumberOfFrames", 0) or 0)
        expected = declared if max_frames is None else min(declared, max_frames)
        if frames.shape[0] < expected:
            raise MediaError(f"video stream truncated: decoded {frames.shape[0]} of {expected} frames")
    else:
        frames = _decode_with_pydicom(ds, max_frames)
    fps = _dataset_fps(ds) or stream_rate or 1.0
    log.debug("decoded %d frames (%s) at %.3f fps", frames.shape[0], ts or "no transfer syntax", fps)
    return frames, fps
