"""The allocator's mmap threshold, fixed at start when configured (in a child process: fixing
it in the test process would slow the video tests that follow)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from dicom_service.config import WorkerSettings
from dicom_service.malloc_tuning import MAX_MMAP_THRESHOLD, mmap_threshold_fixed, set_mmap_threshold
from dicom_service.pipelines.video_memory import NATIVE_GROWTH_BYTES_PER_PIXEL, native_growth_bytes_per_pixel

_CHILD = """
import json
from dicom_service.malloc_tuning import mmap_threshold_fixed, set_mmap_threshold
from dicom_service.pipelines.video_memory import native_growth_bytes_per_pixel
before = native_growth_bytes_per_pixel()
print(json.dumps([set_mmap_threshold(256 * 1024), mmap_threshold_fixed(), before, native_growth_bytes_per_pixel()]))
"""


def test_the_mmap_threshold_is_set_on_glibc_and_left_alone_by_default() -> None:
    assert WorkerSettings().malloc_mmap_threshold_kb == 0
    assert set_mmap_threshold(0) is False and mmap_threshold_fixed() is False
    assert native_growth_bytes_per_pixel() == NATIVE_GROWTH_BYTES_PER_PIXEL
    for bad in (-1, MAX_MMAP_THRESHOLD + 1):
        with pytest.raises(ValueError, match="mmap threshold"):
            set_mmap_threshold(bad)
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    applied, fixed, before, after = json.loads(out.stdout.strip().splitlines()[-1])
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert applied is glibc and fixed is glibc and before == NATIVE_GROWTH_BYTES_PER_PIXEL
    # the video memory estimate then allows for less native growth per pixel and frame
    assert (after < before) is glibc
