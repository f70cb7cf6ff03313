"""Read a BINARY Segmentation's masks one frame at a time, without loading them all.

The node's tooth Segmentations (:func:`dicom_service.writers.seg.write_tooth_segmentation`)
hold one bit per pixel, frames back to back with no per-frame padding, least significant
bit first, in Explicit VR Little Endian. A stored one is opened with its Pixel Data left on
disk and memory-mapped (:func:`segmentation_frames`), so a correction of a long clip reads
the AI's mask of frame ``t`` only when it needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_service.domain import MediaError
from dicom_service.media.pixel_file import deferred_pixel_data
from dicom_service.media.pixels import DECODE_ERRORS, decode_error

#: Transfer syntaxes whose Pixel Data is the plain packed bits.
_NATIVE = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})
#: What :func:`segmentation_frames` may raise on a stored Segmentation's file that is
#: missing, not DICOM, malformed or whose pixel data is short (indexing the frames later
#: reads the mapped bytes, which were checked against the header here).
SEGMENTATION_READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, InvalidDicomError, MediaError)


class PackedMasks:
    """The frames of BINARY pixel data, unpacked when asked for.

    Parameters
    ----------
    packed : bytes-like
        The Pixel Data value (a memory map of the file, or bytes).
    shape : tuple of int
        ``(T, H, W)``.

    Raises
    ------
    ValueError
        ``packed`` is shorter than ``T * H * W`` bits.
    """

    def __init__(self, packed: bytes | memoryview | np.ndarray, shape: tuple[int, int, int]) -> None:
        self._bytes = np.frombuffer(packed, dtype=np.uint8) if not isinstance(packed, np.ndarray) else packed
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        needed = (self.shape[0] * self.shape[1] * self.shape[2] + 7) // 8
        if self._bytes.size < needed:
            raise ValueError(f"packed masks hold {self._bytes.size} bytes, {needed} needed for {self.shape}")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based) as ``(H, W)`` bool."""
        count, rows, columns = self.shape
        if not -count <= index < count:
            raise IndexError(f"frame {index} outside {count} frames")
        index %= count
        pixels = rows * columns
        start = index * pixels
        first, offset = divmod(start, 8)
        chunk = np.asarray(self._bytes[first:(start + pixels + 7) // 8])
        bits = np.unpackbits(chunk, bitorder="little")[offset:offset + pixels]
        return bits.reshape(rows, columns).astype(bool)

    def all(self) -> np.ndarray:
        """Every frame, ``(T, H, W)`` bool."""
        return np.stack([self[t] for t in range(len(self))]) if len(self) else np.zeros(self.shape, bool)


def _references(seg: Dataset, source_sop_instance_uid: str) -> tuple[int, int, int] | None:
    """``(T, H, W)`` of a one-segment Segmentation of ``source_sop_instance_uid``, else None."""
    try:
        referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        if source_sop_instance_uid not in referenced or len(seg.get("SegmentSequence", [])) != 1:
            return None
        if str(seg.get("SegmentationType", "")) != "BINARY":
            return None
        return int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns)
    except (AttributeError, KeyError, ValueError, TypeError):
        return None


def segmentation_frames(seg: Dataset | Path | str, source_sop_instance_uid: str) -> PackedMasks | np.ndarray | None:
    """The masks of a tooth Segmentation of ``source_sop_instance_uid`` (one BINARY segment,
    one frame per source frame), frame by frame; None if ``seg`` is about another instance
    or is not such an object.

    Parameters
    ----------
    seg : Dataset or path
        The Segmentation, in memory or as a file; a file's native Pixel Data is
        memory-mapped, not read.

    Returns
    -------
    PackedMasks or np.ndarray or None
        Indexable by frame, each ``(H, W)`` bool, with ``shape`` ``(T, H, W)``; an array
        when the Pixel Data had to be decoded whole (a compressed transfer syntax).

    Raises
    ------
    OSError
        The file does not read.
    MediaError
        The pixel data does not decode or is too short.
    """
    if not isinstance(seg, Dataset):
        seg = dcmread(Path(seg), defer_size=4096)  # the attributes in memory, the bits mapped
    shape = _references(seg, source_sop_instance_uid)
    if shape is None or "PixelData" not in seg:
        return None
    meta = getattr(seg, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax in _NATIVE:
        try:
            return _native_masks(seg, shape)
        except ValueError as error:  # pixel data shorter than the frames need
            raise decode_error(error) from error
    try:  # only pydicom's decoding and the reshape of what it gave
        return np.asarray(seg.pixel_array).reshape(shape).astype(bool)
    except DECODE_ERRORS as error:
        raise decode_error(error) from error


def _native_masks(seg: Dataset, shape: tuple[int, int, int]) -> PackedMasks:
    """The packed bits of native Pixel Data: memory-mapped when deferred in a file, else
    from memory or the buffer holding them; ValueError if they are too short."""
    element = deferred_pixel_data(seg)
    if element is not None:
        return PackedMasks(np.memmap(seg.filename, dtype=np.uint8, mode="r", offset=element.value_tell,
                                     shape=(element.length,)), shape)
    value = seg.PixelData
    if hasattr(value, "read"):  # Pixel Data held as a buffer (a spooled result)
        value.seek(0)
        data = value.read()
        value.seek(0)
        return PackedMasks(data, shape)
    return PackedMasks(value, shape)
