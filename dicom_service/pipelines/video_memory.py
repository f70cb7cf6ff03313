"""Admission check of the video workflow: does a clip fit in the memory this node may use?

A clip streams through the workflow (decoded, enhanced and encoded frame by frame; the
encoded enhanced video and the packed Segmentation bits go to temporary files), but some of
what it costs still grows with its length: the source instance and its bitstream, the
Segmentation's per-frame attributes and a few motion rows per frame.
Without a check, a recording long enough would have the kernel kill the whole service (the
listener and every other job with it), again at each retry. The workflow instead estimates,
from the header alone and before decoding, the memory the clip needs and fails the job with
a clear error when that is over the budget; the stored instance is kept, so the job can be
run again after the budget is raised.

The estimate is a sum, times a safety margin, plus a fixed allowance for one-off buffers.
What is held: the source's pixel data twice (the dataset and the bitstream handed to the
decoder), the arrays the runtime holds at its peak
(:meth:`~dicom_service.vision.runtime.VideoRuntime.working_bytes`), the
Segmentation's per-frame functional groups and an allowance for the native memory that was
measured to grow with the clip. What computing takes, per pixel of one frame and
whatever the clip's length: the
runtime's network activations
(:meth:`~dicom_service.vision.runtime.VideoRuntime.compute_bytes`) and the codecs' buffers.
``python -m benchmarks.video_memory`` measures the real peak beside this estimate, and
``--stages`` the per-pixel allowances.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_service.domain import UnsupportedInputError
from dicom_service.malloc_tuning import mmap_threshold_fixed
from dicom_service.media.pixel_file import source_bytes_in_memory
from dicom_service.media.video import dataset_fps
from dicom_service.vision.runtime import VideoRuntime

log = logging.getLogger(__name__)

#: Multiplies the counted arrays (allocator slack, short-lived per-frame temporaries).
MARGIN = 1.25
#: The tooth model's activations on its fixed 1024-pixel input, libraries' one-off buffers and
#: the result objects' own overhead.
FIXED_BYTES = 256 * 1024 * 1024
#: The H.264/HEVC decoder's reference frames and the encoder's look-ahead, per source pixel
#: of one frame (``python -m benchmarks.video_memory --stages``, ``codec``).
CODEC_BYTES_PER_PIXEL = 160
#: The same for a single frame (a photograph, or a one-frame video): no reference frames or
#: look-ahead, only the decoded image, the colour conversion and the result's pixel data.
#: ``python -m benchmarks.video_memory --still``: JPEG photographs of 1920x1080, 6000x4000 and
#: 12000x9000 peaked 298, 619 and 2,789 MiB above the loaded service, against estimates of
#: 1,029, 2,054 and 5,984 MiB (with 160 here, as for a clip, 6000x4000 was estimated at 6.5 GiB).
STILL_CODEC_BYTES_PER_PIXEL = 24
#: Bytes per frame of the Segmentation's per-frame functional groups (pydicom datasets):
#: measured 9.2 kB held and 9.6 kB at the peak of writing the object (tracemalloc, 500 and
#: 2,500 frames). Its packed bits and the encoded video are in temporary files, not memory.
SEG_BYTES_PER_FRAME = 12 * 1024
#: Resident memory that grows with the clip outside Python's objects, per source pixel and
#: frame, with glibc's dynamic mmap threshold (heap arenas that frame-sized blocks freed by
#: the stream's threads leave fragmented). With the source left in its file (``python -m
#: benchmarks.video_memory``, the slope of the peak less the Segmentation's attributes):
#: 0.01 at 640x480 from 300 to 1,800 frames, 0.00 at 1280x720 from 60 to 300, 0.12 and 0.05
#: at 1920x1080 from 60 to 300 and to 900 frames, 0.10 at 3840x2160 (HEVC) from 30 to 300;
#: this allows twice the largest. (It was 0.75 while the source was read whole, when
#: 0.36-0.68 was measured with the bitstream in memory twice over.)
NATIVE_GROWTH_BYTES_PER_PIXEL = 0.25
#: The same with the threshold fixed (:mod:`dicom_service.malloc_tuning`, as the service
#: does at start): measured slopes of 0.01-0.03 MiB per frame in all, the Segmentation's
#: attributes included (0.00-0.02 bytes per source pixel and frame beyond them).
NATIVE_GROWTH_FIXED_THRESHOLD_BYTES_PER_PIXEL = 0.1


def native_growth_bytes_per_pixel() -> float:
    """The native growth this process allows for (:data:`NATIVE_GROWTH_BYTES_PER_PIXEL`, or
    the smaller figure once the allocator's mmap threshold is fixed)."""
    return NATIVE_GROWTH_FIXED_THRESHOLD_BYTES_PER_PIXEL if mmap_threshold_fixed() else NATIVE_GROWTH_BYTES_PER_PIXEL
#: Frame rate assumed where the header gives none (the stabiliser's window grows with it).
DEFAULT_FPS = 60.0
#: Share of the memory limit the automatic budget hands to video jobs together.
AUTO_SHARE = 0.75
GIB = 1024.0 ** 3


def estimate_video_bytes(count: int, height: int, width: int, runtime: VideoRuntime, *,
                         fps: float = DEFAULT_FPS, source_bytes: int = 0) -> int:
    """Bytes the video workflow needs for ``count`` frames of ``height x width`` (upper estimate).

    Parameters
    ----------
    count, height, width : int
        Frames and their size (Rows, Columns) as the header declares them.
    runtime : VideoRuntime
        The runtime that will enhance the clip (its :meth:`working_bytes`).
    fps : float
        The clip's frame rate.
    source_bytes : int
        Length of the source's pixel data held in memory (held, and copied once for the
        decoder); 0 when it was left in its file (:func:`source_bytes_in_memory`).
    """
    if count < 1 or height < 1 or width < 1:
        raise ValueError(f"need a positive frame count and size, got {count} frames {width}x{height}")
    grows = (SEG_BYTES_PER_FRAME + native_growth_bytes_per_pixel() * height * width) * count
    held = 2 * source_bytes + runtime.working_bytes(count, height, width, fps) + int(grows)
    codec = CODEC_BYTES_PER_PIXEL if count > 1 else STILL_CODEC_BYTES_PER_PIXEL
    computing = runtime.compute_bytes(count, height, width, fps) + codec * height * width
    return int(MARGIN * (held + computing)) + FIXED_BYTES


def memory_limit_bytes() -> int | None:
    """The memory this process may use: physical memory, or a lower cgroup limit; None if unknown."""
    limits: list[int] = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (cgroup v2) or an unset v1 limit near 2**63: no limit
            limits.append(int(text))
    usable = [v for v in limits if 0 < v < 2 ** 60]
    return min(usable) if usable else None


def process_status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; None
    where /proc or the field is unavailable."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def resident_bytes() -> int:
    """This process's resident set in bytes (0 where /proc is unavailable)."""
    return process_status_bytes("VmRSS") or 0


def video_budget_bytes(configured_mb: int, workers: int) -> int | None:
    """The memory one video job may plan for, in bytes; None when there is no limit to check.

    Parameters
    ----------
    configured_mb : int
        ``workers.video_memory_mb``: > 0 is the budget itself; 0 is automatic:
        :data:`AUTO_SHARE` of :func:`memory_limit_bytes`, less what the process already holds
        (models, caches), shared between the ``workers`` processing workers.
    workers : int
        Processing workers that may run video jobs at once (>= 1).
    """
    if configured_mb < 0 or workers < 1:
        raise ValueError(f"need video_memory_mb >= 0 and workers >= 1, got {configured_mb} and {workers}")
    if configured_mb > 0:
        return configured_mb * 1024 * 1024
    limit = memory_limit_bytes()
    if limit is None:
        return None
    return max(0, int(AUTO_SHARE * limit) - resident_bytes()) // workers


def check_video_fits(source: Dataset, runtime: VideoRuntime, budget: int | None) -> int:
    """Raise unless the instance's frames fit in ``budget`` bytes; return the estimate.

    Reads NumberOfFrames, Rows, Columns, the frame rate and the length of the pixel data
    (nothing is decoded).

    Raises
    ------
    UnsupportedInputError
        The estimate is over the budget (the message gives both and the setting to change).
    """
    count = int(source.get("NumberOfFrames", 1) or 1)
    height, width = int(source.get("Rows", 0) or 0), int(source.get("Columns", 0) or 0)
    if height < 1 or width < 1:
        return 0  # no usable size in the header: the decoder reports the problem
    need = estimate_video_bytes(max(1, count), height, width, runtime, fps=dataset_fps(source) or DEFAULT_FPS,
                                source_bytes=source_bytes_in_memory(source))
    if budget is not None and need > budget:
        log.warning("video of %d frames %dx%d needs about %.1f GiB, over the budget of %.1f GiB",
                    count, width, height, need / GIB, budget / GIB)
        raise UnsupportedInputError(
            f"video too large for this node's memory: {count} frames of {width}x{height} need about "
            f"{need / GIB:.1f} GiB, over the budget of {budget / GIB:.1f} GiB (workers.video_memory_mb, "
            "0 = automatic); the instance is kept: split the recording, or raise the budget and run the job again")
    return need
