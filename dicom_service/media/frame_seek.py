"""Frame ``n`` of an H.264 video decoded from the IDR picture before it, not from the clip's start.

The correction page asks for one frame at a time (``GET /instances/{sop}/frames/{n}``).
Decoding from the start of the clip up to frame ``n`` costs ``n + 1`` frames; an H.264
stream can instead be entered at an IDR picture (instantaneous decoder refresh: no picture
after it refers to one before it), so decoding from the last IDR at or before ``n`` costs
at most one GOP.

The frame must be exactly the one :func:`dicom_service.media.video.open_frames` yields as
frame ``n``: the decoder's ``n``-th picture in output order, cropped to the header's size.
One pass over the container's packets (demuxed, not decoded: milliseconds for a 10 s
clip) builds a :class:`PacketIndex` of where that numbering is known; where it is not,
:func:`seek_frame` returns None and the caller decodes from the start. Seeking is used only
when

- the stream is H.264 and every packet has a presentation timestamp (a raw elementary
  stream has none), all different; no packet is marked discarded or corrupt;
- the container holds exactly NumberOfFrames packets (one picture each: field pictures
  in separate packets, or frames the header does not count, fall back) and the first is
  an IDR;
- the container header and the stream carry one sequence parameter set only, so the
  frame size cannot change within the stream (which the sequential decode refuses), and
  one picture parameter set only: one sent in the stream once, after the header's, would
  be known to the sequential decode but not to a decode entered after it;
- every packet holds a slice of a picture (a packet of only SEI or delimiter units stops
  the sequential decode);
- the entry packet ``p`` holds an IDR and every packet before it (in the file) is
  presented earlier, every packet after it later: the decoder then outputs the ``p``
  pictures before it first, and the entry is frame ``p``.

Decoding from an entry, every frame must come out with the timestamp of the next packet
in presentation order and the stream's size; anything else (and any decoder error) gives
up, so the caller's sequential decode decides, frame or error. What stays assumed, for
the frames before the entry that are not decoded, is that the decoder puts out one
picture per packet (a damaged picture it dropped would shift the sequential numbering).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from dicom_service.domain import MediaError
from dicom_service.media.video import header_sized

log = logging.getLogger(__name__)

_SLICE, _IDR, _SPS, _PPS = 1, 5, 7, 8  # H.264 NAL unit types (ITU-T H.264 Table 7-1)
_START_CODE = b"\x00\x00\x01"


class _Unusable(Exception):
    """The bitstream's structure is not what seeking needs (never leaves this module)."""


@dataclass(frozen=True)
class PacketIndex:
    """The packets of an H.264 stream, in file (decode) order.

    Attributes
    ----------
    pts, dts : tuple of int
        Presentation and decode timestamps (stream time base) of each packet; a ``dts``
        may be None (Matroska).
    entries : tuple of int
        Positions of the packets decoding may start at, ascending; ``0`` first. The entry
        at position ``p`` is frame ``p``.
    """

    pts: tuple[int, ...]
    dts: tuple[int | None, ...]
    entries: tuple[int, ...]

    def entry_for(self, frame: int) -> int:
        """The last entry at or before ``frame`` (``0 <= frame < len(pts)``)."""
        return self.entries[bisect.bisect_right(self.entries, frame) - 1]


@dataclass(frozen=True)
class SeekResult:
    """Frame ``frame`` decoded from the entry ``entry``.

    Attributes
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 RGB at the header's Rows and Columns.
    entry : int
        The frame (an IDR picture) decoding started at.
    decoded : int
        Frames the decoder put out to reach it (``frame - entry + 1``).
    """

    rgb: np.ndarray
    entry: int
    decoded: int


def _nal_units(data: bytes, length_size: int | None) -> Iterator[tuple[int, int, int]]:
    """``(type, start, end)`` of each NAL unit of an H.264 access unit ``data``: prefixed
    by its length in ``length_size`` bytes (MP4's and Matroska's ``avcC`` form), or (None)
    after Annex B start codes; ``data[start:end]`` is the unit, trailing zero bytes dropped.

    Raises
    ------
    _Unusable
        A length runs past the end, or nothing is found.
    """
    found = False
    if length_size:
        at = 0
        while at < len(data):
            if at + length_size > len(data):
                raise _Unusable("a NAL unit length runs past the packet")
            length = int.from_bytes(data[at:at + length_size], "big")
            at += length_size
            if length < 1 or at + length > len(data):
                raise _Unusable("a NAL unit runs past the packet")
            found = True
            yield data[at] & 0x1F, at, at + length
            at += length
    else:
        start = data.find(_START_CODE)
        while start >= 0:
            start += len(_START_CODE)
            following = data.find(_START_CODE, start)
            end = len(data) if following < 0 else following
            while end > start and data[end - 1] == 0:
                end -= 1
            if end > start:
                found = True
                yield data[start] & 0x1F, start, end
            start = following
    if not found:
        raise _Unusable("no NAL unit")


def _parameter_sets(extradata: bytes) -> tuple[int | None, dict[int, set[bytes]]]:
    """The NAL length size (None: Annex B) and the sequence and picture parameter sets of a
    stream's ``extradata`` (an ``avcC`` record, Annex B units, or nothing), by NAL unit type."""
    sets: dict[int, set[bytes]] = {_SPS: set(), _PPS: set()}
    if not extradata:
        return None, sets
    if extradata[0] != 1:
        for kind, s, e in _nal_units(extradata, None):
            if kind in sets:
                sets[kind].add(extradata[s:e])
        return None, sets
    if len(extradata) < 6:
        raise _Unusable("short avcC record")
    at, count = 6, extradata[5] & 0x1F
    for kind in (_SPS, _PPS):
        for _ in range(count):
            length = int.from_bytes(extradata[at:at + 2], "big")
            if length < 1 or at + 2 + length > len(extradata):
                raise _Unusable("malformed avcC record")
            sets[kind].add(extradata[at + 2:at + 2 + length])
            at += 2 + length
        if kind == _SPS:
            if at >= len(extradata):
                raise _Unusable("malformed avcC record")
            at, count = at + 1, extradata[at]
    return (extradata[4] & 3) + 1, sets


def _entries(pts: list[int], idr: list[bool]) -> tuple[int, ...]:
    """Positions ``p`` with an IDR whose timestamp is above every earlier packet's and below
    every later packet's (``pts`` in file order)."""
    later = [0] * len(pts)  # the smallest timestamp after each position
    smallest = None
    for position in range(len(pts) - 1, -1, -1):
        later[position] = smallest
        smallest = pts[position] if smallest is None else min(smallest, pts[position])
    entries, largest = [], None
    for position, stamp in enumerate(pts):
        if idr[position] and (largest is None or largest < stamp) and (later[position] is None
                                                                       or stamp < later[position]):
            entries.append(position)
        largest = stamp if largest is None else max(largest, stamp)
    return tuple(entries)


def index_packets(source: Callable[[], BinaryIO], count: int) -> PacketIndex | None:
    """Demux (without decoding) the video stream ``source()`` opens and index its packets.

    Parameters
    ----------
    source : callable
        Opens the container/bitstream (as :func:`dicom_service.media.video.bitstream_source`).
    count : int
        The instance's NumberOfFrames.

    Returns
    -------
    PacketIndex or None
        None where the frame numbering cannot be known without decoding (the module's
        conditions), or the stream does not demux.
    """
    pts: list[int] = []
    dts: list[int | None] = []
    idr: list[bool] = []
    try:
        with source() as file, av.open(file, mode="r") as container:
            if not container.streams.video or container.streams.video[0].codec_context.name != "h264":
                return None
            stream = container.streams.video[0]
            length_size, sets = _parameter_sets(bytes(stream.codec_context.extradata or b""))
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None:
                    continue  # the end-of-stream packet that flushes the decoder
                if packet.pts is None or packet.is_discard or packet.is_corrupt or len(pts) >= count:
                    return None
                data = bytes(packet)
                units = list(_nal_units(data, length_size))
                for kind, s, e in units:
                    if kind in sets:
                        sets[kind].add(data[s:e])
                if any(len(found) > 1 for found in sets.values()):
                    return None
                if not any(_SLICE <= kind <= _IDR for kind, _, _ in units):
                    return None
                pts.append(packet.pts)
                dts.append(packet.dts)
                idr.append(any(kind == _IDR for kind, _, _ in units))
    except (av.FFmpegError, _Unusable) as exc:
        log.debug("frame seeking not possible: %s", exc)
        return None
    if len(pts) != count or not idr or not idr[0] or len(set(pts)) != len(pts):
        return None
    return PacketIndex(tuple(pts), tuple(dts), _entries(pts, idr))


def _packets_from(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                  index: PacketIndex, entry: int, seek: bool) -> Iterator[av.Packet]:
    """The packets from position ``entry`` on (and the end-of-stream packet), each checked
    against ``index``: after seeking to the entry's timestamp (``seek``) or from the start.

    Raises
    ------
    _Unusable
        A packet that is not the one the index has at its position (the seek landed
        somewhere the index does not know, or after the entry).
    """
    position: int | None = 0
    if seek:
        stamp = index.dts[entry]
        container.seek(index.pts[entry] if stamp is None else stamp, stream=stream, backward=True)
        position = None
    for packet in container.demux(stream):
        if packet.size == 0 and packet.pts is None:
            yield packet
            return
        if position is None:  # the first packet after the seek: which one is it?
            if packet.pts not in index.pts[:entry + 1]:
                raise _Unusable(f"the seek landed on packet pts {packet.pts}, not at or before the entry")
            position = index.pts.index(packet.pts)
        if position >= len(index.pts) or packet.pts != index.pts[position]:
            raise _Unusable(f"packet {position} is not the indexed one")
        if position >= entry:
            yield packet
        position += 1


def _decode_from(source: Callable[[], BinaryIO], index: PacketIndex, entry: int, frame: int,
                 size: tuple[int, int] | None, seek: bool) -> SeekResult | None:
    """Decode from ``entry`` up to ``frame``, checking each frame's timestamp (None: the
    stream ended first or a frame was not the expected one)."""
    expected = sorted(index.pts[entry:])[:frame - entry + 1]
    with source() as file, av.open(file, mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width = height = None
        decoded = 0
        for packet in _packets_from(container, stream, index, entry, seek):
            for picture in packet.decode():
                width, height = width or picture.width, height or picture.height
                if picture.pts != expected[decoded] or (picture.width, picture.height) != (width, height):
                    log.debug("frame seeking: frame %d came out as pts %s %dx%d", entry + decoded, picture.pts,
                              picture.width, picture.height)
                    return None
                decoded += 1
                if decoded == len(expected):
                    rgb = header_sized(picture.to_ndarray(format="rgb24"), size)
                    return SeekResult(np.ascontiguousarray(rgb), entry, decoded)
    return None


def seek_frame(source: Callable[[], BinaryIO], frame: int, count: int,
               size: tuple[int, int] | None) -> SeekResult | None:
    """Frame ``frame`` of an H.264 video, decoded from the last IDR picture at or before it.

    Parameters
    ----------
    source : callable
        Opens the container/bitstream (:func:`dicom_service.media.video.bitstream_source`).
    frame : int
        ``0 <= frame < count``.
    count : int
        The instance's NumberOfFrames.
    size : tuple of int or None
        The header's ``(Rows, Columns)`` (:func:`dicom_service.media.video.header_sized`).

    Returns
    -------
    SeekResult or None
        None where seeking could give another frame than the sequential decode, where it
        gains nothing (the entry is the first frame), or where decoding fails: the caller
        then decodes from the start, which gives the frame or the error.
    """
    index = index_packets(source, count)
    if index is None:
        return None
    entry = index.entry_for(frame)
    if entry == 0:
        return None
    try:
        try:
            return _decode_from(source, index, entry, frame, size, seek=True)
        except _Unusable as exc:
            log.debug("frame seeking: %s; reading from the start instead", exc)
            return _decode_from(source, index, entry, frame, size, seek=False)
    except (av.FFmpegError, MediaError, _Unusable) as exc:
        log.debug("frame seeking failed: %s", exc)
        return None
