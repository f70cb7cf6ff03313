"""Video decode/encode: H.264 round trips, stills, odd sizes, corrupt streams."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets

from dicom_service.domain import MediaError
from dicom_service.media.video import (
    H264_HP_L41,
    H264_HP_L42_2D,
    check_frame_count,
    encapsulated_bitstream,
    open_frames,
    read_frames,
    video_transfer_syntax_for,
)
from dicom_service.media.video_encode import encode_h264_mp4
from dicom_service.pipelines.video import process_video_instance
from dicom_service.vision.baseline_video import ClassicalVideoRuntime
from tests import builders


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of the same shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def video() -> Dataset:
    return builders.make_video_photographic(frames=12, rows=240, cols=320, seed=4)


def test_h264_round_trip(video: Dataset) -> None:
    frames, fps = read_frames(video)
    source, _ = builders.make_intraoral_scene(frames=12, rows=240, cols=320, seed=4)
    assert frames.shape == (12, 240, 320, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(30.0)
    assert psnr(frames, source) > 30.0
    assert video.file_meta.TransferSyntaxUID == H264_HP_L41
    buffer = io.BytesIO(video.PixelData)
    assert parse_basic_offsets(buffer) == []  # empty Basic Offset Table
    assert len(list(generate_fragments(buffer))) == 1


def test_mp4_is_faststart_and_in_memory_variant_decodes(video: Dataset) -> None:
    mp4 = encapsulated_bitstream(video.PixelData)
    assert mp4.find(b"moov") < mp4.find(b"mdat")
    source, _ = builders.make_intraoral_scene(frames=5, rows=64, cols=96, seed=1)
    plain = encode_h264_mp4(source, 25.0, faststart=False)
    frames, fps = read_frames(builders.with_pixel_stream(video, plain, frames=5, size=(64, 96)))
    assert frames.shape[0] == 5 and psnr(frames, source) > 30.0


def test_frames_of_another_size_than_the_header_says() -> None:
    """A stream whose frames are not Rows x Columns is a MediaError at its first frame (not a
    Segmentation that fails to match after the whole clip was restored); a decoder's frame
    that only adds macroblock padding (1920x1088 for 1920x1080) is cropped to the header."""
    source, _ = builders.make_intraoral_scene(frames=3, rows=64, cols=96, seed=1)
    stream = encode_h264_mp4(source, 25.0)
    video = builders.make_video_photographic(frames=3, rows=64, cols=96)
    with pytest.raises(MediaError, match="frames are 96x64, the header says 192x128"):
        read_frames(builders.with_pixel_stream(video, stream, frames=3, size=(128, 192)))
    padded, _ = read_frames(builders.with_pixel_stream(video, stream, frames=3, size=(56, 90)))
    whole, _ = read_frames(builders.with_pixel_stream(video, stream, frames=3, size=(64, 96)))
    assert padded.shape == (3, 56, 90, 3) and np.array_equal(padded, whole[:, :56, :90])
    del video.NumberOfFrames  # counted by decoding (once, keeping no frame), then streamed
    counted = open_frames(builders.with_pixel_stream(video, stream, size=(64, 96)))
    assert counted.count == 3 and len(list(counted.frames)) == 3


def test_max_frames_and_ntsc_rate() -> None:
    ds = builders.make_video_photographic(frames=6, rows=64, cols=96, fps=29.97)
    frames, fps = read_frames(ds, max_frames=2)
    assert frames.shape[0] == 2
    assert fps == pytest.approx(30000 / 1001, rel=1e-6)


def test_one_frame_video() -> None:
    ds = builders.make_video_photographic(frames=1, rows=64, cols=96)
    frames, _ = read_frames(ds)
    assert frames.shape == (1, 64, 96, 3)


def test_odd_frame_size_is_padded_by_edge_replication() -> None:
    ds = builders.make_video_photographic(frames=3, rows=101, cols=135, seed=2)
    assert (ds.Rows, ds.Columns) == (102, 136)
    frames, _ = read_frames(ds)
    source, _ = builders.make_intraoral_scene(frames=3, rows=101, cols=135, seed=2)
    assert frames.shape == (3, 102, 136, 3)
    assert psnr(frames[:, :101, :135], source) > 30.0
    assert psnr(frames[:, 101, :135], source[:, 100]) > 25.0


def test_grayscale_replicated_frames_round_trip() -> None:
    grey = np.repeat(np.linspace(0, 255, 64 * 96, dtype=np.uint8).reshape(1, 64, 96, 1), 3, axis=3)
    grey = np.repeat(grey, 2, axis=0)
    template = builders.make_video_photographic(frames=2, rows=64, cols=96)
    frames, _ = read_frames(builders.with_pixel_stream(template, encode_h264_mp4(grey, 30.0)))
    assert psnr(frames, grey) > 30.0
    assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 6


def test_grayscale_radiograph_is_replicated_to_rgb() -> None:
    ds = builders.make_intraoral_radiograph(rows=64, cols=64)
    frames, fps = read_frames(ds)
    assert frames.shape == (1, 64, 64, 3) and fps == 1.0
    assert np.array_equal(frames[..., 0], frames[..., 1])


def test_vl_photographic_jpeg_still() -> None:
    ds = builders.make_vl_photographic_jpeg(rows=120, cols=160, seed=5)
    frames, fps = read_frames(ds)
    source, _ = builders.make_intraoral_scene(frames=1, rows=120, cols=160, seed=5)
    assert frames.shape == (1, 120, 160, 3) and fps == 1.0
    assert psnr(frames, source) > 30.0


@pytest.mark.parametrize("kind", ["half", "head", "garbage", "zeros"])
def test_corrupt_or_truncated_streams_raise_media_error(video: Dataset, kind: str) -> None:
    mp4 = encapsulated_bitstream(video.PixelData)
    data = {
        "half": mp4[: len(mp4) // 2],
        "head": mp4[:200],
        "garbage": np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "zeros": bytes(4000),
    }[kind]
    with pytest.raises(MediaError):
        read_frames(builders.with_pixel_stream(video, data))


def test_missing_pixel_data_raises_media_error(video: Dataset) -> None:
    bare = copy.deepcopy(video)
    del bare.PixelData
    with pytest.raises(MediaError, match="no pixel data"):
        read_frames(bare)


def test_transfer_syntax_choice() -> None:
    assert video_transfer_syntax_for(640, 480, 30.0) == H264_HP_L41
    assert video_transfer_syntax_for(1920, 1080, 29.97) == H264_HP_L41
    assert video_transfer_syntax_for(1280, 720, 60.0) == H264_HP_L42_2D
    assert video_transfer_syntax_for(1920, 1080, 50.0) == H264_HP_L42_2D
    with pytest.raises(MediaError):
        video_transfer_syntax_for(3840, 2160, 30.0)


def test_encoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_h264_mp4(np.zeros((2, 16, 16), np.uint8), 30.0)
    with pytest.raises(ValueError):
        encode_h264_mp4(np.zeros((1, 16, 16, 3), np.uint8), 0.0)


def test_stream_shorter_than_number_of_frames_is_truncated(video: Dataset) -> None:
    source, _ = builders.make_intraoral_scene(frames=3, rows=64, cols=96, seed=1)
    with pytest.raises(MediaError, match="truncated"):
        read_frames(builders.with_pixel_stream(video, encode_h264_mp4(source, 30.0), frames=10, size=(64, 96)))


def test_native_multi_frame_rgb_and_max_frames() -> None:
    still = builders.make_colour_photo_as_dx(rows=32, cols=48, seed=2)
    multi = copy.deepcopy(still)
    multi.NumberOfFrames = 3
    multi.PixelData = still.PixelData * 3
    frames, fps = read_frames(multi, max_frames=2)
    assert frames.shape == (2, 32, 48, 3) and fps == 1.0
    reference = np.frombuffer(still.PixelData, np.uint8).reshape(32, 48, 3)
    assert np.array_equal(frames[1], reference)


def test_h264_fit_keeps_what_fits_and_shrinks_the_rest() -> None:
    from dicom_service.media.video import h264_fit

    assert h264_fit(1920, 1080, 60.0) == (1920, 1080, 1)
    assert h264_fit(640, 480, 30.0) == (640, 480, 1)
    assert h264_fit(3840, 2160, 30.0) == (1920, 1080, 1)
    assert h264_fit(2160, 3840, 30.0) == (1080, 1920, 1)  # portrait
    assert h264_fit(2560, 1440, 60.0) == (1920, 1080, 1)  # x2 super-resolved 1280x720
    assert h264_fit(2001, 1001, 30.0) == (1920, 960, 1)  # aspect kept, even numbers
    assert h264_fit(1280, 720, 120.0) == (1280, 720, 2)
    assert h264_fit(1280, 720, 59.94) == (1280, 720, 1)
    with pytest.raises(ValueError):
        h264_fit(0, 720, 30.0)


def test_output_sink_downscales_thins_out_and_encodes() -> None:
    """The video workflow's sink fits what H.264 Level 4.2 cannot carry, frame by frame: a
    x2 super-resolved 1280x720 clip doubled to 120 fps comes out 1920x1080 at 60 fps, the
    steps say so, and the stream decodes; a clip that fits is encoded as it is."""
    from dicom_service.media.video import h264_fit_steps
    from dicom_service.pipelines.video_output import VideoOutputSink

    assert h264_fit_steps(64, 48, 30.0) == (64, 48, 1, [])
    big = np.random.default_rng(0).integers(0, 256, (4, 1440, 2560, 3), dtype=np.uint8)
    sink = VideoOutputSink(video=True)
    sink.start(120.0)
    for frame in big:
        sink.frame(frame)
    mp4_file, count, size, fps = sink.finish()
    with mp4_file:  # the encoder's temporary file, already unlinked: nothing left behind
        mp4 = mp4_file.read()
    assert (count, size, fps) == (2, (1080, 1920), 60.0) and len(sink.fitted) == 2
    assert "60 fps" in sink.fitted[0] and "2560x1440 to 1920x1080" in sink.fitted[1]
    template = builders.make_video_photographic(frames=2, rows=64, cols=96)
    assert read_frames(builders.with_pixel_stream(template, mp4, frames=2, size=(1080, 1920)))[0].shape == \
        (2, 1080, 1920, 3)
    small = builders.make_intraoral_scene(frames=3, rows=48, cols=64, seed=3)[0]
    sink = VideoOutputSink(video=True)
    sink.start(30.0)
    for frame in small:
        sink.frame(frame)
    assert sink.finish()[0].read() == encode_h264_mp4(small, 30.0) and sink.fitted == []
    with pytest.raises(ValueError, match="no enhanced video frames"):
        VideoOutputSink(video=True).finish()


def test_stream_decoding_gives_the_frames_one_at_a_time(video: Dataset) -> None:
    """``open_frames`` knows the count and rate before decoding, yields the frames
    ``read_frames`` gives, stops at NumberOfFrames (frames beyond it are ignored, so the
    Segmentation always matches the header) and decodes a stream without NumberOfFrames
    whole to count it."""
    from dicom_service.media.video import open_frames

    whole, fps = read_frames(video)
    stream = open_frames(video)
    assert (stream.count, stream.fps) == (12, fps)
    assert np.array_equal(np.stack(list(stream.frames)), whole)
    longer = builders.with_pixel_stream(video, encapsulated_bitstream(video.PixelData), frames=5)
    assert read_frames(longer)[0].shape[0] == 5 and open_frames(longer).count == 5
    del longer.NumberOfFrames
    counted = open_frames(longer)
    assert counted.count == 12 and len(list(counted.frames)) == 12
    truncated = builders.with_pixel_stream(video, encapsulated_bitstream(video.PixelData), frames=20)
    frames = open_frames(truncated).frames
    with pytest.raises(MediaError, match="truncated: decoded 12 of 20"):
        for _ in frames:
            pass


def test_encoder_takes_frames_of_one_size_only() -> None:
    from dicom_service.media.video_encode import H264Encoder

    with H264Encoder(30.0) as encoder:
        encoder.add(np.zeros((33, 47, 3), np.uint8))
        assert encoder.size == (34, 48)  # padded to even
        with pytest.raises(ValueError, match="frame 1 is 48x32"):
            encoder.add(np.zeros((32, 48, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            encoder.add(np.zeros((34, 48, 3), np.float32))
    with pytest.raises(ValueError, match="no frame"):
        H264Encoder(30.0).close()


def test_frame_size_change_within_the_stream_is_a_media_error(video: Dataset) -> None:
    """Two raw H.264 streams of different sizes back to back: a clear, permanent MediaError
    (it used to be a bare ValueError from stacking, which the queue retried)."""
    import av

    def raw(width: int, height: int) -> bytes:
        out = io.BytesIO()
        with av.open(out, "w", format="h264") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for level in (40, 120, 200):
                frame = np.full((height, width, 3), level, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return out.getvalue()

    with pytest.raises(MediaError, match=r"size changes within the video stream \(96x64, then 128x96 at frame 4\)"):
        read_frames(builders.with_pixel_stream(video, raw(96, 64) + raw(128, 96), frames=6, size=(64, 96)))


def test_encoder_hands_its_mp4_over_as_a_file_and_leaves_nothing_behind() -> None:
    """``close_file`` gives the MP4 as an open file at its start; the temporary folder is
    already gone (the data lives until the file is closed), so a failed or finished job
    leaves no file behind. The MP4 decodes to the frames' count and size."""
    from dicom_service.media.video_encode import H264Encoder

    frames = builders.make_intraoral_scene(frames=4, rows=48, cols=64, seed=2)[0]
    encoder = H264Encoder(30.0)
    for frame in frames:
        encoder.add(frame)
    folder = Path(encoder._tmp.name)  # noqa: SLF001 - where the encoder writes
    assert folder.is_dir()
    with encoder.close_file() as mp4:
        assert not folder.exists() and mp4.tell() == 0
        data = mp4.read()
    template = builders.make_video_photographic(frames=4, rows=48, cols=64)
    assert read_frames(builders.with_pixel_stream(template, data, frames=4))[0].shape == (4, 48, 64, 3)
    in_memory = H264Encoder(30.0, faststart=False)
    for frame in frames:
        in_memory.add(frame)
    buffer = in_memory.close_file()
    assert isinstance(buffer, io.BytesIO) and buffer.tell() == 0 and buffer.read()[4:8] == b"ftyp"


def test_palette_colour_photos_are_shown_through_their_palette() -> None:
    """PALETTE COLOR indices go through the palette (not read as grey levels); a palette
    that is missing is a MediaError."""
    photo, appearance = builders.make_palette_photo()
    frames, _ = read_frames(photo)
    assert frames.shape == (1, 48, 64, 3) and np.array_equal(frames[0], appearance)
    del photo.GreenPaletteColorLookupTableData
    with pytest.raises(MediaError, match="colour palette"):
        read_frames(photo)


def test_the_workflow_needs_a_video_s_frame_count_from_its_header() -> None:
    """An MPEG video without a positive Number of Frames is refused before decoding (the
    workflow would not know its length, nor could its Segmentation name the frames); a
    native photograph without one is one frame."""
    video = builders.make_video_photographic(frames=3, rows=64, cols=96)
    check_frame_count(video)
    for value in (None, 0, -2):
        bad = copy.deepcopy(video)
        if value is None:
            del bad.NumberOfFrames
        else:
            bad.NumberOfFrames = value
        with pytest.raises(MediaError, match="no Number of Frames"):
            check_frame_count(bad)
    with pytest.raises(MediaError, match="no Number of Frames"):  # the workflow asks first
        process_video_instance(bad, ClassicalVideoRuntime(), uid_seed="test")
    check_frame_count(builders.make_palette_photo()[0])
