"""Shared pieces of the benchmarks: hardware description, medians, timing a command."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def hardware() -> dict[str, Any]:
    """CPU model, logical cores, memory and the OS, for the benchmark's JSON."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def tool_version(exe: str) -> str:
    """First line of ``exe --version`` (e.g. DCMTK's ``$dcmtk: storescu v3.6.7 ... $``)."""
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False, timeout=30)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def timed_run(
    args: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command; return its wall-clock seconds and the finished process."""
    start = time.perf_counter()
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return time.perf_counter() - start, proc
