"""One frame of a stored photo or video, with its tooth mask drawn over it, or a
radiograph, as PNG or JPEG.

What the correction pages (``api/static/correct.html``, ``implants.html``) show a
dentist before a click: the frame as the node decoded it, or the radiograph as the
implant models read it (the coordinates of the page's clicks are its pixels), and the
tooth mask the node holds for a frame, the AI's or the newest correction's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.pixels import iter_pixels

from dicom_service.domain import InputError, MediaError
from dicom_service.media.frame_seek import seek_frame
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.media.pixels import DECODE_ERRORS, decode_error, load_radiograph
from dicom_service.media.video import MPEG_TRANSFER_SYNTAXES, bitstream_source, open_frames, to_rgb_uint8

#: Overlay colour (RGB) and opacity of the tooth mask; the outline is drawn opaque.
MASK_RGB = (40, 220, 90)
MASK_ALPHA = 0.35


@dataclass(frozen=True)
class DecodedFrame:
    """One frame of an instance and what it cost (:func:`read_frame`).

    Attributes
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    count : int
        The instance's number of frames.
    start : int
        The frame decoding started at: the IDR picture before it (an H.264 video that
        can be entered there), 0 (decoded from the start of the clip), or the frame
        itself (pixel data whose frames are read one by one).
    decoded : int
        Frames decoded to get it.
    """

    rgb: np.ndarray
    count: int
    start: int
    decoded: int


def read_frame(path: str, index: int) -> DecodedFrame:
    """Frame ``index`` of the instance at ``path``, as :func:`decode_frame` gives it, and
    where its decoding started.

    An MPEG video's bitstream is read from the file. An H.264 video is decoded from the
    last IDR picture at or before the frame (:func:`dicom_service.media.frame_seek.seek_frame`)
    where its packets show that this gives the very frame the decode from the start
    gives; other MPEG video (and H.264 that does not show it: a raw elementary stream
    without timestamps, NumberOfFrames unlike the packets, ...) is decoded from its start,
    one frame at a time. Other pixel data gives just that frame, read from the file
    (pydicom's ``iter_pixels`` on the path). Memory stays about one frame.

    Raises
    ------
    InputError
        ``index`` is not a frame of the instance.
    MediaError
        The pixel data does not decode.
    """
    ds = dcmread(path, defer_size=DEFER_BYTES)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if syntax not in MPEG_TRANSFER_SYNTAXES:
        count = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        if not 0 <= index < count:
            raise InputError(f"frame {index} is not a frame of this instance (0 to {count - 1})")
        if "PixelData" not in ds:
            raise MediaError("the instance has no pixel data")
        try:
            decoded = next(iter_pixels(path, indices=[index], as_rgb=True))
        except DECODE_ERRORS as exc:
            raise decode_error(exc) from exc
        return DecodedFrame(to_rgb_uint8(np.asarray(decoded)[None], ds)[0], count, index, 1)
    stream = open_frames(ds)
    if not 0 <= index < stream.count:
        raise InputError(f"frame {index} is not a frame of this instance (0 to {stream.count - 1})")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    size = (rows, columns) if rows > 0 and columns > 0 else None
    sought = seek_frame(bitstream_source(ds), index, stream.count, size) if index > 0 else None
    if sought is not None:
        stream.frames.close()  # not started: nothing was decoded from the start
        return DecodedFrame(sought.rgb, stream.count, sought.entry, sought.decoded)
    for number, frame in enumerate(stream.frames):
        if number == index:
            return DecodedFrame(np.ascontiguousarray(frame), stream.count, 0, number + 1)
    raise InputError(f"frame {index}: the stream ended before it")


def decode_frame(path: str, index: int) -> tuple[np.ndarray, int]:
    """Frame ``index`` of the instance at ``path``, ``(H, W, 3)`` uint8 RGB (the frame
    :func:`dicom_service.media.video.open_frames` yields as frame ``index``), and the
    instance's number of frames (:func:`read_frame`).

    Raises
    ------
    InputError
        ``index`` is not a frame of the instance.
    MediaError
        The pixel data does not decode.
    """
    found = read_frame(path, index)
    return found.rgb, found.count


def radiograph_preview(path: str) -> np.ndarray:
    """The radiograph at ``path`` as the implant models saw it, ``(rows, columns, 3)`` uint8
    grey RGB (:func:`~dicom_service.media.pixels.load_radiograph`: Modality and VOI LUT,
    MONOCHROME1 inverted), so that its pixels are those the findings' boxes use.

    Raises
    ------
    MediaError
        The pixel data does not decode.
    """
    try:
        image = load_radiograph(dcmread(path))
    except DECODE_ERRORS as exc:
        raise decode_error(exc) from exc
    grey = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def overlay_mask(frame: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``frame`` ``(H, W, 3)`` RGB with ``mask`` ``(H, W)`` bool blended in and outlined."""
    if mask is None:
        return frame
    if mask.shape != frame.shape[:2]:
        raise InputError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the frame {frame.shape[1]}x{frame.shape[0]}")
    out = frame.astype(np.float32)
    out[mask] = out[mask] * (1 - MASK_ALPHA) + np.asarray(MASK_RGB, np.float32) * MASK_ALPHA
    result = out.round().astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(result, contours, -1, MASK_RGB, 1)
    return result


#: Largest frame (pixels) that ``format=auto`` sends as PNG; larger ones go as JPEG.
AUTO_PNG_MAX_PIXELS = 1280 * 720
#: JPEG quality of a preview (visually lossless for pointing at teeth).
JPEG_QUALITY = 95


def preview_bytes(rgb: np.ndarray, image_format: str) -> tuple[bytes, str]:
    """``(H, W, 3)`` uint8 RGB encoded for the browser, and its media type.

    ``image_format``: ``png`` (lossless), ``jpeg`` (quality :data:`JPEG_QUALITY`), or
    ``auto``: PNG up to :data:`AUTO_PNG_MAX_PIXELS`, JPEG above (a 4K phantom frame took
    224 ms and 13.9 MB as PNG, 25 ms and 2.4 MB as JPEG: ``benchmarks/frame_preview.py``).
    The image keeps the frame's size either way: the page's clicks are in its pixels.
    """
    if image_format == "auto":
        image_format = "png" if rgb.shape[0] * rgb.shape[1] <= AUTO_PNG_MAX_PIXELS else "jpeg"
    if image_format == "png":
        return png_bytes(rgb), "image/png"
    if image_format != "jpeg":
        raise InputError(f"unknown image format {image_format!r} (png, jpeg or auto)")
    return _encoded(rgb, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]), "image/jpeg"


def png_bytes(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB as PNG bytes."""
    return _encoded(rgb, ".png", [])


def _encoded(rgb: np.ndarray, extension: str, params: list[int]) -> bytes:
    """``(H, W, 3)`` uint8 RGB encoded by OpenCV as ``extension`` (``.png``, ``.jpg``)."""
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise InputError(f"the frame could not be encoded as {extension[1:].upper()}")
    return encoded.tobytes()
