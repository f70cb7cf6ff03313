"""One frame of a stored photo or video, with its tooth mask drawn over it, as a PNG.

What the correction page (``api/static/correct.html``) shows a dentist before a click:
the frame as the node decoded it (the coordinates of the page's clicks are this frame's
pixels) and the tooth mask the node holds for it, the AI's or the newest correction's.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydicom import dcmread

from dicom_service.domain import InputError
from dicom_service.media.video import open_frames

#: Overlay colour (RGB) and opacity of the tooth mask; the outline is drawn opaque.
MASK_RGB = (40, 220, 90)
MASK_ALPHA = 0.35


def decode_frame(path: str, index: int) -> tuple[np.ndarray, int]:
    """Frame ``index`` of the instance at ``path``, ``(H, W, 3)`` uint8 RGB, and the
    instance's number of frames.

    Decodes from the start up to that frame (a video's frames before it are decoded and
    dropped one at a time).

    Raises
    ------
    InputError
        ``index`` is not a frame of the instance.
    MediaError
        The pixel data does not decode.
    """
    stream = open_frames(dcmread(path))
    if not 0 <= index < stream.count:
        raise InputError(f"frame {index} is not a frame of this instance (0 to {stream.count - 1})")
    for number, frame in enumerate(stream.frames):
        if number == index:
            return np.ascontiguousarray(frame), stream.count
    raise InputError(f"frame {index}: the stream ended before it")


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


def png_bytes(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB as PNG bytes."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError("the frame could not be encoded as PNG")
    return encoded.tobytes()
