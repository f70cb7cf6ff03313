"""GET /instances/{sop}/frames/{n}: a stored video's frame as PNG, with the AI's or the
newest correction's tooth mask drawn over it (what the correction page shows)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from dicom_service.api.app import create_app
from dicom_service.domain import InputError, MediaError
from dicom_service.media import frame_seek
from dicom_service.media.frame_preview import (
    MASK_ALPHA,
    MASK_RGB,
    decode_frame,
    overlay_mask,
    preview_bytes,
    read_frame,
)
from dicom_service.media.frame_seek import index_packets
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.media.pixels import load_radiograph
from dicom_service.media.seg_frames import segmentation_frames
from dicom_service.media.video import bitstream_source, open_frames
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import store
from tests.unit.test_service_flow import _wait_job

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def _png(response) -> np.ndarray:  # noqa: ANN001 - httpx.Response
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    bgr = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_overlay_blends_inside_the_mask_and_outlines_it() -> None:
    frame = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    out = overlay_mask(frame, mask)
    inside = np.round(100 * (1 - MASK_ALPHA) + np.asarray(MASK_RGB) * MASK_ALPHA)
    assert (out[9, 15] == inside).all()  # inside, away from the outline
    assert (out[5, 10] == MASK_RGB).all()  # on the outline
    assert (out[~mask] == 100).all()  # outside untouched
    assert overlay_mask(frame, None) is frame


def test_frames_with_ai_and_corrected_masks(make_settings) -> None:
    video = builders.make_video_photographic(frames=6, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    radiograph = builders.make_intraoral_radiograph()
    with TestClient(create_app(Service(make_settings(models={"radiograph": "baseline"})))) as client:
        port = client.app.state.service.node.port
        assert store(port, video) == 0 and store(port, radiograph) == 0
        process = _wait_job(client, lambda j: j["kind"] == "process" and j["workflow"] == "video"
                            and j["state"] == "succeeded")
        decoded = list(open_frames(video).frames)

        plain = client.get(f"/instances/{sop}/frames/2", params={"masks": "none"}, headers=AUTH)
        assert plain.headers["x-mask-source"] == "none" and plain.headers["cache-control"] == "no-store"
        assert plain.headers["x-frame-count"] == "6"
        assert np.array_equal(_png(plain), decoded[2])  # the frame the node decoded, losslessly

        ai = client.get(f"/instances/{sop}/frames/2", params={"masks": "ai"}, headers=AUTH)
        assert ai.headers["x-mask-source"] == "ai"
        seg_path = next(path for kind, path in client.get(f"/jobs/{process['id']}", headers=AUTH)
                        .json()["result"]["results"] if kind == "seg")
        ai_mask = np.asarray(segmentation_frames(seg_path, sop)[2], bool)
        assert ai_mask.any()
        assert np.array_equal(_png(ai), overlay_mask(decoded[2], ai_mask))
        # no correction yet: "latest" is the AI's
        assert client.get(f"/instances/{sop}/frames/2", headers=AUTH).headers["x-mask-source"] == "ai"

        reply = client.post("/corrections/tooth-masks", headers=AUTH, json={
            "sop_instance_uid": sop, "frame": 3, "box": [10, 8, 70, 60], "radius": 1}).json()
        latest = client.get(f"/instances/{sop}/frames/3", headers=AUTH)
        assert latest.headers["x-mask-source"] == f"correction {reply['sop_instance_uid']}"
        corrected = np.asarray(segmentation_frames(reply["path"], sop)[3], bool)
        assert np.array_equal(_png(latest), overlay_mask(decoded[3], corrected))
        assert not np.array_equal(corrected, np.asarray(segmentation_frames(seg_path, sop)[3], bool))

        # a small frame is PNG with format=auto too; JPEG when asked, at the frame's size
        auto = client.get(f"/instances/{sop}/frames/2", params={"masks": "none", "format": "auto"}, headers=AUTH)
        assert np.array_equal(_png(auto), decoded[2])
        jpeg = client.get(f"/instances/{sop}/frames/2", params={"masks": "none", "format": "jpeg"}, headers=AUTH)
        assert jpeg.headers["content-type"] == "image/jpeg"
        shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert shown.shape == decoded[2].shape
        assert np.abs(shown.astype(int) - decoded[2]).mean() < 3.0

        # bad requests
        assert client.get(f"/instances/{sop}/frames/2", params={"format": "gif"}, headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/6", headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/6", params={"masks": "none"}, headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/-1", headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/0", params={"masks": "all"}, headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}.9/frames/0", headers=AUTH).status_code == 404
        assert client.get(f"/instances/{sop}/frames/0").status_code == 401
        # a radiograph: frame 0 as the implant models read it, grey, no tooth mask
        other = str(radiograph.SOPInstanceUID)
        shown = client.get(f"/instances/{other}/frames/0", headers=AUTH)
        assert shown.status_code == 200 and shown.headers["x-mask-source"] == "none"
        grey = cv2.imdecode(np.frombuffer(shown.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert grey.shape[:2] == (int(radiograph.Rows), int(radiograph.Columns))
        expected = np.round(load_radiograph(radiograph) * 255.0).astype(np.uint8)
        assert np.array_equal(grey[:, :, 0], expected) and np.array_equal(grey[:, :, 0], grey[:, :, 2])
        assert client.get(f"/instances/{other}/frames/1", headers=AUTH).status_code == 422


def test_auto_sends_frames_above_720p_as_jpeg_at_their_own_size() -> None:
    rng = np.random.default_rng(0)
    for rows, cols, expected in ((720, 1280, "image/png"), (1080, 1920, "image/jpeg"), (2160, 3840, "image/jpeg")):
        frame = cv2.GaussianBlur(rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8), (0, 0), 2)
        encoded, media_type = preview_bytes(frame, "auto")
        assert media_type == expected
        back = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
        assert back.shape == (rows, cols, 3)  # the page's clicks are in the frame's pixels
    with pytest.raises(InputError, match="unknown image format"):
        preview_bytes(frame, "gif")


# --- frame n of an H.264 video, decoded from the IDR picture before it ---------------------------

KEYINT = 10  # the GOP of the test clips: IDR pictures at frames 0, 10, ..., 80 of 90


@pytest.fixture(scope="module")
def gop_clip() -> np.ndarray:
    """90 phantom frames ``(90, 64, 96, 3)`` uint8 RGB."""
    return builders.make_intraoral_scene(frames=90, rows=64, cols=96, seed=3)[0]


def _stored(folder: Path, clip: np.ndarray, *, frames: int | None = None, size: tuple[int, int] | None = None,
            container: str = "mp4", x264_params: str = "", name: str = "clip.dcm") -> Path:
    """``clip`` as an H.264 Video Photographic instance saved in ``folder`` (``frames``: its
    NumberOfFrames, default the clip's; ``size``: its ``(Rows, Columns)``, default the clip's)."""
    template = builders.make_video_photographic(frames=1, rows=64, cols=96)
    data = builders.h264_stream(clip, rows=clip.shape[1], cols=clip.shape[2], keyint=KEYINT,
                                container=container, x264_params=x264_params)
    ds = builders.with_pixel_stream(template, data, frames=frames or len(clip), size=size)
    return builders.save(ds, folder / name)


def _sequential(path: Path) -> list[np.ndarray]:
    """The frames the node numbers, decoded from the start (what the workflow's masks refer to)."""
    return list(open_frames(dcmread(path, defer_size=DEFER_BYTES)).frames)


@pytest.mark.parametrize("container", ["mp4", "mpegts", "matroska"])
def test_h264_frames_are_decoded_from_the_idr_before_them(tmp_path: Path, gop_clip: np.ndarray,
                                                          container: str) -> None:
    path = _stored(tmp_path, gop_clip, container=container)
    expected = _sequential(path)
    assert len(expected) == 90
    source = bitstream_source(dcmread(path, defer_size=DEFER_BYTES))
    assert index_packets(source, 90).entries == tuple(range(0, 90, KEYINT))
    # the first frame, inside the first GOP, on an IDR, inside a later GOP, its last frame, the last frame
    for index in (0, 7, 10, 43, 49, 50, 80, 89):
        found = read_frame(str(path), index)
        assert np.array_equal(found.rgb, expected[index]), index
        assert found.count == 90
        start = index // KEYINT * KEYINT  # the seek path is taken from the second GOP on
        assert (found.start, found.decoded) == (start, index - start + 1), index
        rgb, count = decode_frame(str(path), index)
        assert np.array_equal(rgb, expected[index]) and count == 90


def test_every_frame_of_a_pyramid_b_frame_clip_with_a_cropped_header_size(tmp_path: Path,
                                                                          gop_clip: np.ndarray) -> None:
    """B-pyramids reorder deeply; the header's 58x90 crops the stream's 64x96 (macroblock
    padding): every one of the 90 frames is the sequential decode's, cropped alike."""
    path = _stored(tmp_path, gop_clip, size=(58, 90), x264_params="bframes=3:b-pyramid=normal")
    expected = _sequential(path)
    assert expected[0].shape == (58, 90, 3)
    for index in range(90):
        found = read_frame(str(path), index)
        assert np.array_equal(found.rgb, expected[index]), index
        assert found.start == index // KEYINT * KEYINT


def test_seeking_and_reading_to_the_entry_give_the_same_frame(tmp_path: Path, gop_clip: np.ndarray) -> None:
    """Where a seek lands off the entry the packets are read from the start instead (not decoded)."""
    path = _stored(tmp_path, gop_clip)
    source = bitstream_source(dcmread(path, defer_size=DEFER_BYTES))
    index = index_packets(source, 90)
    sought = frame_seek._decode_from(source, index, 60, 64, None, seek=True)
    read = frame_seek._decode_from(source, index, 60, 64, None, seek=False)
    assert sought is not None and read is not None
    assert np.array_equal(sought.rgb, read.rgb) and np.array_equal(read.rgb, _sequential(path)[64])
    assert (read.entry, read.decoded) == (60, 5)


@pytest.mark.parametrize("case", ["raw elementary stream", "open GOP", "fewer frames in the header",
                                  "more frames in the header"])
def test_streams_that_cannot_be_entered_are_decoded_from_the_start(tmp_path: Path, gop_clip: np.ndarray,
                                                                   case: str) -> None:
    """No timestamps (raw H.264), keyframes that are not IDR pictures (open GOP), or a
    NumberOfFrames unlike the packets: the frame comes from the start, the same frame."""
    frames = {"fewer frames in the header": 80, "more frames in the header": 95}.get(case, 90)
    path = _stored(tmp_path, gop_clip, frames=frames, container="h264" if case == "raw elementary stream" else "mp4",
                   x264_params="open-gop=1" if case == "open GOP" else "")
    expected = _sequential(path) if frames <= 90 else list(open_frames(dcmread(path), max_frames=90).frames)
    index = index_packets(bitstream_source(dcmread(path, defer_size=DEFER_BYTES)), frames)
    assert index is None or index.entries == (0,)  # open GOP: only the first picture is an IDR
    for index in (0, 10, 43, 79):
        found = read_frame(str(path), index)
        assert np.array_equal(found.rgb, expected[index]), index
        assert (found.start, found.decoded, found.count) == (0, index + 1, frames)
    if frames > 90:  # as before: the stream ends before the frame
        with pytest.raises(MediaError, match="truncated: decoded 90 of 95"):
            read_frame(str(path), 92)


def _back_to_back(first: bytes, second: bytes) -> bytes:
    """Two MPEG-TS H.264 streams remuxed into one, the second's timestamps after the first's."""
    out = io.BytesIO()
    with av.open(io.BytesIO(first)) as one, av.open(io.BytesIO(second)) as two, \
            av.open(out, "w", format="mpegts") as muxer:
        stream = muxer.add_stream_from_template(one.streams.video[0])
        offset = 0
        for source in (one, two):
            last = 0
            for packet in source.demux(video=0):
                if packet.size:
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    last = max(last, packet.pts)
                    packet.stream = stream
                    muxer.mux(packet)
            offset = last + 3000
    return out.getvalue()


def test_a_stream_whose_frame_size_changes_is_refused_as_before(tmp_path: Path, gop_clip: np.ndarray) -> None:
    """A 96x64 clip, then a 128x96 one, in one MPEG-TS (timestamps in order, two sequence
    parameter sets): no seeking, so frame 50 gives the sequential decode's error, not a
    frame of the second clip."""
    small = builders.h264_stream(gop_clip[:30], rows=64, cols=96, keyint=KEYINT, container="mpegts")
    large = builders.h264_stream(np.stack([np.pad(f, ((0, 32), (0, 32), (0, 0))) for f in gop_clip[30:]]),
                                 rows=96, cols=128, keyint=KEYINT, container="mpegts")
    ds = builders.with_pixel_stream(builders.make_video_photographic(frames=1, rows=64, cols=96),
                                    _back_to_back(small, large), frames=90)
    path = builders.save(ds, tmp_path / "two.dcm")
    assert index_packets(bitstream_source(dcmread(path, defer_size=DEFER_BYTES)), 90) is None
    assert np.array_equal(read_frame(str(path), 12).rgb, _sequential_prefix(path, 13)[12])
    with pytest.raises(MediaError, match=r"size changes within the video stream \(96x64, then 128x96 at frame 31\)"):
        read_frame(str(path), 50)


def _sequential_prefix(path: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of the sequential decode."""
    frames = open_frames(dcmread(path, defer_size=DEFER_BYTES)).frames
    return [next(frames) for _ in range(count)]


def test_other_mpeg_video_is_decoded_from_the_start(tmp_path: Path, gop_clip: np.ndarray) -> None:
    """HEVC (here a raw elementary stream) is not entered at keyframes."""
    ds = builders.make_hevc_video_photographic(iter(gop_clip[:20]), count=20, rows=64, cols=96)
    path = builders.save(ds, tmp_path / "hevc.dcm")
    found = read_frame(str(path), 15)
    assert np.array_equal(found.rgb, _sequential(path)[15])
    assert (found.start, found.decoded) == (0, 16)


@pytest.mark.parametrize("index", [90, 91, -1])
def test_bad_frame_numbers_are_input_errors(tmp_path: Path, gop_clip: np.ndarray, index: int) -> None:
    path = _stored(tmp_path, gop_clip)
    for decode in (read_frame, decode_frame):
        with pytest.raises(InputError, match=rf"^frame {index} is not a frame of this instance \(0 to 89\)$"):
            decode(str(path), index)


def _remuxed_mp4(first: bytes, second: bytes | None = None, *, insert: tuple[int, bytes] | None = None) -> bytes:
    """MP4 H.264 streams ``first`` then ``second`` in one MP4 under ``first``'s ``avcC`` record,
    the second's parameter sets sent once, in its first packet; ``insert``: ``(position,
    NAL unit)``, one more packet holding just that unit, presented just after the packets
    before it."""
    out = io.BytesIO()
    with av.open(io.BytesIO(first)) as one, av.open(out, "w", format="mp4") as muxer:
        template = one.streams.video[0]
        stream = muxer.add_stream_from_template(template)
        packets = [(bytes(p), p.pts, p.dts) for p in one.demux(template) if p.size]
        if second is not None:
            with av.open(io.BytesIO(second)) as two:
                record = bytes(two.streams.video[0].codec_context.extradata)
                offset = max(pts for _, pts, _ in packets) + 512
                later = [(bytes(p), p.pts + offset, p.dts + offset) for p in two.demux(video=0) if p.size]
            sps_length = int.from_bytes(record[6:8], "big")
            sps, at = record[8:8 + sps_length], 8 + sps_length + 1
            pps = record[at + 2:at + 2 + int.from_bytes(record[at:at + 2], "big")]
            header = b"".join(len(unit).to_bytes(4, "big") + unit for unit in (sps, pps))
            packets += [(header + later[0][0], *later[0][1:])] + later[1:]
        if insert is not None:
            position, unit = insert
            stamp = max(pts for _, pts, _ in packets[:position]) + 1
            packets.insert(position, (len(unit).to_bytes(4, "big") + unit, stamp, packets[position - 1][2] + 1))
        for data, pts, dts in packets:
            packet = av.Packet(data)
            packet.pts, packet.dts, packet.time_base, packet.stream = pts, dts, template.time_base, stream
            muxer.mux(packet)
    return out.getvalue()


def test_a_picture_parameter_set_sent_once_in_the_stream_is_not_skipped(tmp_path: Path,
                                                                      gop_clip: np.ndarray) -> None:
    """Two recordings back to back under one sequence parameter set, the second with its own
    picture parameter set (CAVLC) sent once, at its start: a decode entered at a later IDR
    would not know it (and put out garbage), so every frame comes from the start."""
    first = builders.h264_stream(gop_clip[:40], rows=64, cols=96, keyint=KEYINT, x264_params="weightp=0")
    second = builders.h264_stream(gop_clip[40:], rows=64, cols=96, keyint=KEYINT, x264_params="weightp=0:cabac=0")
    ds = builders.with_pixel_stream(builders.make_video_photographic(frames=1, rows=64, cols=96),
                                    _remuxed_mp4(first, second), frames=90)
    path = builders.save(ds, tmp_path / "two_pps.dcm")
    assert index_packets(bitstream_source(dcmread(path, defer_size=DEFER_BYTES)), 90) is None
    expected = _sequential(path)
    for index in (30, 45, 50, 60, 89):
        found = read_frame(str(path), index)
        assert np.array_equal(found.rgb, expected[index]), index
        assert found.start == 0


def test_a_packet_without_a_picture_gives_the_sequential_decodes_error(tmp_path: Path,
                                                                       gop_clip: np.ndarray) -> None:
    """A packet holding only an SEI unit stops the sequential decode (no frame after it); a
    decode entered after it must not give a frame either."""
    sei = bytes([0x06, 0x05, 0x01, 0x00, 0x80])
    data = _remuxed_mp4(builders.h264_stream(gop_clip, rows=64, cols=96, keyint=KEYINT), insert=(4, sei))
    ds = builders.with_pixel_stream(builders.make_video_photographic(frames=1, rows=64, cols=96), data, frames=91)
    path = builders.save(ds, tmp_path / "sei_packet.dcm")
    assert index_packets(bitstream_source(dcmread(path, defer_size=DEFER_BYTES)), 91) is None
    with pytest.raises(MediaError, match="cannot be decoded"):
        _sequential(path)
    for index in (45, 90):
        with pytest.raises(MediaError, match="cannot be decoded"):
            read_frame(str(path), index)
