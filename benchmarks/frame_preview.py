"""Frame preview benchmark: one frame of a stored H.264 video, decoded from the start or from its IDR.

What ``GET /instances/{sop}/frames/{n}`` costs the correction page. A 10 s 640x480 30 fps
phantom clip (300 frames) is stored twice as a Video Photographic DICOM file: as the node's
own encoder writes it (:func:`dicom_service.media.video_encode.encode_h264_mp4`: libx264's
default GOP, an IDR picture every 250 frames at most, and at scene cuts) and with an IDR
picture every second (``keyint=30``, as many cameras write). For frames 0, 150 and 299 it
times, from the file on disk, the decode from the start of the clip (what the service did
before: :func:`sequential_frame`) and :func:`dicom_service.media.frame_preview.read_frame`
(from the last IDR at or before the frame, where the packets allow), median of
``--repeats`` runs, and checks that both give the same pixels. ``index_ms`` is the packet
index pass alone (demuxing, no decoding), part of every seek.

Prints one JSON object: per clip and frame, ``sequential_ms``, ``seek_ms``, the frame
decoding started at (``start``) and the frames decoded (``decoded``); and ``encode``: what
sending a frame costs as PNG and as JPEG
(:func:`dicom_service.media.frame_preview.preview_bytes`) at 640x480, 1920x1080 and
3840x2160, milliseconds and bytes, on a phantom frame rendered at each size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from benchmarks.common import hardware, median
from dicom_service.media.frame_preview import preview_bytes, read_frame
from dicom_service.media.frame_seek import index_packets
from dicom_service.media.pixel_file import DEFER_BYTES
from dicom_service.media.video import bitstream_source, open_frames
from dicom_service.media.video_encode import encode_h264_mp4
from tests import builders


def sequential_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` ``(H, W, 3)`` uint8 RGB decoded from the start of the clip, one frame
    at a time (the frame preview before seeking)."""
    for number, frame in enumerate(open_frames(dcmread(path, defer_size=DEFER_BYTES)).frames):
        if number == index:
            return np.ascontiguousarray(frame)
    raise ValueError(f"no frame {index}")


def _clips(folder: Path, frames: int, rows: int, cols: int, fps: float) -> dict[str, Path]:
    """The phantom clip stored as the node encodes it and with a 1 s GOP."""
    clip, _ = builders.make_intraoral_scene(frames=frames, rows=rows, cols=cols, seed=0)
    template = builders.make_video_photographic(frames=1, rows=rows, cols=cols, fps=fps)
    streams = {
        "node encoder (libx264 default GOP)": encode_h264_mp4(clip, fps),
        f"1 s GOP (keyint={round(fps)})": builders.h264_stream(clip, rows=rows, cols=cols, keyint=round(fps),
                                                               fps=fps),
    }
    paths = {}
    for number, (name, data) in enumerate(streams.items()):
        paths[name] = builders.save(builders.with_pixel_stream(template, data, frames=frames),
                                    folder / f"clip{number}.dcm")
    return paths


def _timed(call: Any, repeats: int) -> tuple[float, Any]:
    """Median milliseconds of ``repeats`` calls of ``call()`` and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(median(times), 1), result


def measure(frames: int, rows: int, cols: int, fps: float, repeats: int) -> dict[str, Any]:
    """The benchmark's figures (see the module doc)."""
    indices = (0, frames // 2, frames - 1)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as folder:
        for name, path in _clips(Path(folder), frames, rows, cols, fps).items():
            source = bitstream_source(dcmread(path, defer_size=DEFER_BYTES))
            index_ms, index = _timed(lambda: index_packets(source, frames), repeats)  # noqa: B023
            rows_out = []
            for frame in indices:
                sequential_ms, expected = _timed(lambda: sequential_frame(path, frame), repeats)  # noqa: B023
                seek_ms, found = _timed(lambda: read_frame(str(path), frame), repeats)  # noqa: B023
                if not np.array_equal(found.rgb, expected):
                    raise SystemExit(f"{name}: frame {frame} differs from the sequential decode")
                rows_out.append({"frame": frame, "sequential_ms": sequential_ms, "seek_ms": seek_ms,
                                 "start": found.start, "decoded": found.decoded})
            out[name] = {"idr_frames": list(index.entries) if index else None, "index_ms": index_ms,
                         "bytes": path.stat().st_size, "frames": rows_out}
    return out


def measure_encoding(repeats: int) -> list[dict[str, Any]]:
    """Milliseconds and bytes of one frame as PNG and as JPEG, by frame size."""
    rows_out = []
    for cols, rows in ((640, 480), (1920, 1080), (3840, 2160)):
        frame = np.ascontiguousarray(builders.make_intraoral_scene(frames=1, rows=rows, cols=cols, seed=5)[0][0])
        row: dict[str, Any] = {"size": f"{cols}x{rows}"}
        for image_format in ("png", "jpeg"):
            ms, (encoded, _) = _timed(lambda: preview_bytes(frame, image_format), repeats)  # noqa: B023
            row[f"{image_format}_ms"], row[f"{image_format}_bytes"] = ms, len(encoded)
        rows_out.append(row)
    return rows_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args(argv)
    cols, rows = (int(v) for v in args.size.lower().split("x"))
    frames = round(args.seconds * args.fps)
    result = {"benchmark": "frame_preview", "hardware": hardware(), "clip": {
        "frames": frames, "size": f"{cols}x{rows}", "fps": args.fps}, "repeats": args.repeats,
        "clips": measure(frames, rows, cols, args.fps, args.repeats), "encode": measure_encoding(args.repeats)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
