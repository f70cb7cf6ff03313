"""Encapsulated pixel data left in its file, read on demand.

A stored video is read with ``dcmread(path, defer_size=DEFER_BYTES)``: its header comes into
memory, its (encapsulated) Pixel Data stays on disk. :func:`file_fragments` finds the byte
ranges of the fragments by walking the item headers in the file, and :class:`FileSegments`
gives the decoder those ranges, end to end, as one read-only stream, so a long clip's
bitstream is never held in memory (it used to be held twice: the value, and the
fragments joined for the decoder).
"""

from __future__ import annotations

import bisect
import io
import os
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicom_service.domain import MediaError

#: ``dcmread(..., defer_size=DEFER_BYTES)``: values longer than this stay in the file.
DEFER_BYTES = 64 * 1024
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)


def deferred_pixel_data(ds: Dataset) -> RawDataElement | None:
    """``ds``'s Pixel Data element if its value was left in ``ds.filename`` (read with
    ``defer_size``): its ``value_tell`` is the value's offset in the file, its ``length``
    the value's length (``0xFFFFFFFF`` when encapsulated); None if the value is in memory."""
    if "PixelData" not in ds or not isinstance(getattr(ds, "filename", None), (str, os.PathLike)):
        return None
    element = ds.get_item("PixelData", keep_deferred=True)
    return element if isinstance(element, RawDataElement) and element.value is None else None


def fragment_ranges(file: BinaryIO, start: int, end: int, *, delimited: bool) -> list[tuple[int, int]]:
    """Walk the items (FFFE,E000) of encapsulated Pixel Data in ``file`` from byte ``start``
    up to byte ``end``: the ``(offset, length)`` of each fragment after the Basic Offset
    Table. ``delimited``: the value ends with the Sequence Delimitation Item (as in a file);
    otherwise at ``end`` (pydicom's in-memory value).

    Raises
    ------
    MediaError
        An item that is not one, that runs past ``end``, a value that ends inside an item
        header or (``delimited``) before its delimiter, or no fragment holding data.
    """
    fragments: list[tuple[int, int]] = []
    file.seek(start)
    first = True
    while delimited or file.tell() < end:
        header = file.read(8)
        if len(header) < 8:
            raise MediaError("encapsulated pixel data is malformed: it runs past the end of the "
                             + ("file" if delimited else "data"))
        group, elem, length = struct.unpack("<HHI", header)
        if delimited and (group, elem) == _SEQUENCE_END:
            break
        if (group, elem) != _ITEM or file.tell() + length > end:
            raise MediaError(f"encapsulated pixel data is malformed: item ({group:04X},{elem:04X}) of "
                             f"{length} bytes at byte {file.tell() - 8 - start}")
        if not first and length:  # the first item is the Basic Offset Table
            fragments.append((file.tell(), length))
        first = False
        file.seek(length, io.SEEK_CUR)
    if not fragments:
        raise MediaError("encapsulated pixel data has no fragment")
    return fragments


def file_fragments(ds: Dataset) -> list[tuple[int, int]] | None:
    """The ``(offset, length)`` byte ranges in ``ds.filename`` of the fragments of ``ds``'s
    encapsulated Pixel Data, if the value was left in the file (deferred); None if it is in
    memory or is not encapsulated.

    Raises
    ------
    MediaError
        The items are malformed, run past the end of the file, or hold no data
        (:func:`fragment_ranges`).
    """
    element = deferred_pixel_data(ds)
    if element is None or element.length != 0xFFFFFFFF:
        return None
    filename = ds.filename
    with open(filename, "rb") as file:
        return fragment_ranges(file, element.value_tell, Path(filename).stat().st_size, delimited=True)


def source_bytes_in_memory(ds: Dataset) -> int:
    """Bytes of ``ds``'s Pixel Data held in memory (0 if it was left in its file)."""
    if "PixelData" not in ds or deferred_pixel_data(ds) is not None:
        return 0
    return len(ds.PixelData)


class FileSegments(io.RawIOBase):
    """Byte ranges of a file, end to end, as one read-only, seekable binary stream.

    Parameters
    ----------
    path : path
    segments : list of (offset, length)
    """

    def __init__(self, path: str | os.PathLike, segments: list[tuple[int, int]]) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this stream
        self._segments = segments
        self._starts = []  # position of each segment in this stream
        total = 0
        for _, length in segments:
            self._starts.append(total)
            total += length
        self._size = total
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            index = bisect.bisect_right(self._starts, self._position) - 1
            offset, length = self._segments[index]
            within = self._position - self._starts[index]
            self._file.seek(offset + within)
            got = self._file.readinto(view[done:done + min(len(view) - done, length - within)])
            if not got:
                raise MediaError("the file ended inside its pixel data")
            done += got
            self._position += got
        return done

    def close(self) -> None:
        self._file.close()
        super().close()
