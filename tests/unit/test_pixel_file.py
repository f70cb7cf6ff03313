"""A stored video's bitstream read from its file, never held in memory."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate

from dicom_service.domain import MediaError
from dicom_service.media.pixel_file import DEFER_BYTES, FileSegments, file_fragments, source_bytes_in_memory
from dicom_service.media.video import encapsulated_bitstream, open_frames, read_frames
from tests import builders


@pytest.fixture(scope="module")
def video():
    return builders.make_video_photographic(frames=12, rows=96, cols=128)


def _saved(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path, defer_size=DEFER_BYTES if len(encapsulated_bitstream(ds.PixelData)) > DEFER_BYTES else 256)


def test_a_deferred_video_decodes_from_its_file_to_the_same_frames(video, tmp_path) -> None:
    deferred = _saved(video, tmp_path / "video.dcm")
    fragments = file_fragments(deferred)
    assert fragments is not None and len(fragments) == 1
    assert source_bytes_in_memory(deferred) == 0 and source_bytes_in_memory(video) == len(video.PixelData)
    assert file_fragments(video) is None  # in memory
    expected, fps = read_frames(video)
    frames = np.stack(list(open_frames(deferred).frames))
    assert np.array_equal(frames, expected) and open_frames(deferred).fps == fps
    element = deferred.get_item("PixelData", keep_deferred=True)
    assert element.value is None  # decoding did not load the value into the data set


def test_a_bitstream_in_several_fragments_is_read_end_to_end(video, tmp_path) -> None:
    stream = encapsulated_bitstream(video.PixelData)
    cuts = [0, 1000, 1002, 2500, len(stream)]
    parts = [stream[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    split = builders.with_pixel_stream(video, stream, frames=12)
    split.PixelData = encapsulate([p + b"\0" * (len(p) % 2) for p in parts], has_bot=True)
    deferred = _saved(split, tmp_path / "split.dcm")
    fragments = file_fragments(deferred)
    assert fragments is not None and len(fragments) == 4
    with FileSegments(deferred.filename, fragments) as reader:
        joined = reader.read()
        assert joined == encapsulated_bitstream(split.PixelData)
        reader.seek(998)
        assert reader.read(6) == joined[998:1004]  # across two fragments
        assert reader.seek(-3, io.SEEK_END) == len(joined) - 3 and reader.read() == joined[-3:]
        with pytest.raises(ValueError, match="negative"):
            reader.seek(-1)
    assert np.array_equal(np.stack(list(open_frames(deferred).frames)), read_frames(video)[0])


def test_malformed_items_in_the_file_are_a_media_error(video, tmp_path) -> None:
    path = tmp_path / "bad.dcm"
    deferred = _saved(video, path)
    offset = file_fragments(deferred)[0][0]
    raw = bytearray(path.read_bytes())
    raw[offset - 4:offset] = (2**31).to_bytes(4, "little")  # the fragment's length runs past the file
    path.write_bytes(bytes(raw))
    broken = dcmread(path, defer_size=256)
    with pytest.raises(MediaError, match="malformed"):
        file_fragments(broken)
