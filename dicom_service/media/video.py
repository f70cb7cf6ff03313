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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.pixels import apply_color_lut, iter_pixels

from dicom_service.domain import MediaError, UnsupportedInputError
from dicom_service.media.pixel_file import FileSegments, file_fragments
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


def h264_fit_steps(width: int, height: int, fps: float) -> tuple[int, int, int, list[str]]:
    """:func:`h264_fit` with the processing-step lines that say what it changes (empty when
    the clip fits): ``(width, height, step, steps)``; frames are thinned to one in ``step``
    first, then downscaled (area interpolation) to ``width x height``."""
    new_width, new_height, step = h264_fit(width, height, fps)
    steps: list[str] = []
    if step > 1:
        steps.append(f"One frame in {step} kept ({fps:g} to {fps / step:g} fps) to fit H.264 Level 4.2 (60 fps)")
    if (new_width, new_height) != (width, height):
        steps.append(f"Downscaled from {width}x{height} to {new_width}x{new_height} to fit H.264 Level 4.2 "
                     "(1920x1080), the largest a DICOM H.264 video carries")
    return new_width, new_height, step, steps


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


def dataset_fps(ds: Dataset) -> float | None:
    """Frame rate from FrameTime (ms), RecommendedDisplayFrameRate or CineRate, if any."""
    frame_time = ds.get("FrameTime")
    if frame_time is not None and float(frame_time) > 0:
        return _snap_rate(1000.0 / float(frame_time))
    for keyword in ("RecommendedDisplayFrameRate", "CineRate"):
        value = ds.get(keyword)
        if value is not None and float(value) > 0:
            return float(value)
    return None


def bitstream_source(ds: Dataset) -> Callable[[], BinaryIO]:
    """Opens the MPEG bitstream of ``ds`` for the decoder: read from the file where the
    Pixel Data was left there (:mod:`dicom_service.media.pixel_file`), else from memory."""
    fragments = file_fragments(ds)
    if fragments is not None:
        path = ds.filename
        return lambda: FileSegments(path, fragments)
    data = encapsulated_bitstream(ds.PixelData)
    return lambda: io.BytesIO(data)


def _stream_rate(source: Callable[[], BinaryIO]) -> float | None:
    """The average frame rate a container/bitstream declares (None: none, or no video stream)."""
    try:
        with source() as file, av.open(file, mode="r") as container:
            if not container.streams.video:
                raise MediaError("the video bitstream has no video stream")
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else None
    except av.FFmpegError as exc:
        raise MediaError(f"video bitstream cannot be decoded: {exc}") from exc


#: Rows or columns a decoded frame may have beyond the header's Rows and Columns: an
#: encoder's padding to whole 16-pixel macroblocks that its stream does not crop away
#: (1920x1088 for 1920x1080); the frames are cropped to the header's size.
MACROBLOCK_PADDING = 15


def header_sized(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """A decoded frame ``(h, w, 3)`` at the header's ``size`` ``(Rows, Columns)`` (None: as
    decoded): cropped where the decoder's frame only adds macroblock padding.

    Raises
    ------
    MediaError
        The frame is smaller than the header says, or larger by more than padding.
    """
    if size is None or image.shape[:2] == size:
        return image
    (rows, columns), (height, width) = size, image.shape[:2]
    if rows <= height <= rows + MACROBLOCK_PADDING and columns <= width <= columns + MACROBLOCK_PADDING:
        return image[:rows, :columns]
    raise MediaError(f"the video stream's frames are {width}x{height}, the header says {columns}x{rows} "
                     "(Columns x Rows)")


def _iter_bitstream(source: Callable[[], BinaryIO], limit: int | None, expected: int,
                    size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Decode a container/bitstream (``source()`` opens it) with PyAV, one ``(H, W, 3)``
    uint8 RGB frame at a time: at most ``limit`` frames (None: all); fewer than ``expected``
    is a truncated stream. ``size``: the header's ``(Rows, Columns)`` the frames must have
    (:func:`header_sized`; None: not checked)."""
    decoded = 0
    first: tuple[int, ...] | None = None
    try:
        with source() as file, av.open(file, mode="r") as container:
            if not container.streams.video:
                raise MediaError("the video bitstream has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="rgb24")
                first = first or image.shape
                if image.shape != first:
                    raise MediaError(f"the frame size changes within the video stream ({first[1]}x{first[0]}, "
                                     f"then {image.shape[1]}x{image.shape[0]} at frame {decoded + 1}); such "
                                     "streams are not supported")
                decoded += 1
                yield header_sized(image, size)
                if limit is not None and decoded >= limit:
                    break
    except av.FFmpegError as exc:
        raise MediaError(f"video bitstream cannot be decoded: {exc}") from exc
    if not decoded:
        raise MediaError("no frames decoded from the video bitstream")
    if decoded < expected:
        raise MediaError(f"video stream truncated: decoded {decoded} of {expected} frames")


def _palette_to_rgb_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR indices ``(T, H, W)`` through the instance's colour palette to uint8 RGB
    ``(T, H, W, 3)`` (8- or 16-bit palette entries).

    Raises
    ------
    MediaError
        The palette is missing or does not fit the data.
    """
    try:
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except DECODE_ERRORS as exc:
        raise MediaError(f"PALETTE COLOR pixels without a usable colour palette: {exc}") from exc
    if bits > 8:
        rgb = rgb >> (bits - 8)
    return rgb.astype(np.uint8)


def to_rgb_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Convert decoded pixels ``(T, H, W)`` or ``(T, H, W, 3)`` to uint8 RGB (PALETTE COLOR
    through its palette)."""
    if arr.ndim == 3 and str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        return _palette_to_rgb_uint8(arr, ds)
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


def _iter_with_pydicom(ds: Dataset, count: int) -> Iterator[np.ndarray]:
    """The first ``count`` frames of non-MPEG pixel data, one ``(H, W, 3)`` uint8 RGB at a time."""
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples not in (1, 3):
        raise UnsupportedInputError(f"SamplesPerPixel {samples} is not supported")
    decoded = iter_pixels(ds, indices=range(count), as_rgb=True)
    while True:
        try:  # only pydicom's decoding: what it raises on bad data becomes a MediaError
            arr = next(decoded)
        except StopIteration:
            return
        except DECODE_ERRORS as exc:
            raise decode_error(exc) from exc
        yield to_rgb_uint8(arr[None], ds)[0]


@dataclass
class FrameStream:
    """The frames of an instance, decoded one at a time (:func:`open_frames`).

    Attributes
    ----------
    count : int
        Frames ``frames`` yields (NumberOfFrames, or fewer with ``max_frames``).
    fps : float
        As :func:`read_frames` gives it.
    frames : iterator
        ``(H, W, 3)`` uint8 RGB, in order; it raises :class:`MediaError` where the pixel
        data turns out corrupt or truncated (possibly after some frames).
    """

    count: int
    fps: float
    frames: Iterator[np.ndarray]


def check_frame_count(ds: Dataset) -> None:
    """Raise :class:`MediaError` unless a video's header gives its Number of Frames: an MPEG
    stream without it would have to be decoded whole to be counted, and the workflow's
    Segmentation names each frame by that count (the video IODs require it)."""
    file_meta = getattr(ds, "file_meta", None)
    ts = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    if ts not in MPEG_TRANSFER_SYNTAXES:
        return  # native or image-compressed frames: as many as the header says (1 without it)
    try:
        frames = int(ds.get("NumberOfFrames", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise MediaError(f"NumberOfFrames is not a number: {exc}") from exc
    if frames < 1:
        raise MediaError("the video's header gives no Number of Frames (0028,0008), which the video IODs "
                         "require; it is not processed")


def open_frames(ds: Dataset, *, max_frames: int | None = None) -> FrameStream:
    """Prepare to decode the frames of a video or colour image instance one at a time, so
    that a long clip is never held whole in memory (:func:`read_frames` decodes them all).

    An MPEG stream is decoded up to NumberOfFrames (frames beyond it are ignored; fewer is
    a truncated stream); one whose header has no NumberOfFrames is decoded once first, to
    count its frames (no frame is kept). Its frames must have the header's Rows and Columns,
    but for an encoder's macroblock padding, which is cropped (:func:`header_sized`).

    Parameters
    ----------
    ds, max_frames
        As :func:`read_frames`.

    Raises
    ------
    MediaError, UnsupportedInputError
        As :func:`read_frames`; problems found while decoding are raised by the iterator.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if "PixelData" not in ds:
        raise MediaError("the instance has no pixel data")
    file_meta = getattr(ds, "file_meta", None)
    ts = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    declared = int(ds.get("NumberOfFrames", 0) or 0)
    if ts in MPEG_TRANSFER_SYNTAXES:
        source = bitstream_source(ds)
        fps = dataset_fps(ds) or _stream_rate(source) or 1.0
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        size = (rows, columns) if rows > 0 and columns > 0 else None
        if declared < 1:  # the length is not in the header: decode once to count it, keeping no frame
            declared = sum(1 for _ in _iter_bitstream(source, max_frames, 0, size))
        count = declared if max_frames is None else min(declared, max_frames)
        return FrameStream(count, fps, _iter_bitstream(source, count, count, size))
    count = max(1, declared) if max_frames is None else min(max_frames, max(1, declared))
    return FrameStream(count, dataset_fps(ds) or 1.0, _iter_with_pydicom(ds, count))


def read_frames(ds: Dataset, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode all the frames of a video or colour image instance into one array (the
    workflow streams them with :func:`open_frames` instead).

    Parameters
    ----------
    ds : Dataset
        The instance, with ``file_meta.TransferSyntaxUID`` and ``PixelData``.
    max_frames : int, optional
        Stop after this many frames (``None``: all).

    Returns
    -------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB at the header's Rows and Columns (an MPEG stream's
        macroblock padding cropped).
    fps : float
        From FrameTime (most precise), RecommendedDisplayFrameRate or CineRate; else
        the stream's average rate; else 1.0 (stills).

    Raises
    ------
    MediaError
        No pixel data, or the bitstream/pixel data is corrupt, truncated or decodes to
        zero frames; an MPEG stream that yields fewer frames than NumberOfFrames
        declares is taken as truncated; an MPEG stream whose frames are not the size the
        header says.
    UnsupportedInputError
        Pixel data that cannot be turned into RGB frames (e.g. 16-bit colour).
    """
    stream = open_frames(ds, max_frames=max_frames)
    frames = np.stack(list(stream.frames))
    log.debug("decoded %d frames at %.3f fps", frames.shape[0], stream.fps)
    return frames, stream.fps
