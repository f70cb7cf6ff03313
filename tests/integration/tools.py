"""Generic helpers for integration tests and benchmarks: tools, ports, waiting, DCMTK.

Waiting is always polling with a deadline (socket connect attempts, HTTP probes, waits on
an :class:`threading.Event`), never a fixed sleep.

* :func:`storescu` and :func:`echoscu` wrap DCMTK (with ``TCP_NODELAY=1``); storescu
  groups files by transfer syntax so videos and JPEG go out unconverted, and counts the
  success responses (its exit code alone misses failures with some options).
* :func:`require_tool` skips a test when a tool is missing, except with ``CI=true``,
  where it fails it: CI must never lose these tests silently.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tests.dicomcheck import require_tool

T = TypeVar("T")


class ProcessDied(RuntimeError):
    """A server process exited while we waited for it; the message holds its log tail."""


# --------------------------------------------------------------------------- small tools
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    what: str = "condition",
    alive: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns a truthy value; return that value.

    Parameters
    ----------
    probe : callable
        Returns a falsy value while the condition does not hold.
    timeout : float
        Seconds before :class:`TimeoutError`.
    interval : float
        Seconds between probes (an :class:`threading.Event` wait, not a sleep).
    what : str
        Description used in the timeout message.
    alive : callable, optional
        Called before each probe; raises (e.g. :class:`ProcessDied`) to stop early.
    """
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        if alive is not None:
            alive()
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        pause.wait(interval)


def port_open(host: str, port: int) -> bool:
    """True if a TCP connection to ``host:port`` is accepted right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: ``TCP_NODELAY=1`` (no 40 ms delayed-ACK stalls)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


#: DCMTK storescu option that proposes a file's transfer syntax (``-R`` proposes only it).
STORESCU_SYNTAX_OPTIONS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2": (), "1.2.840.10008.1.2.1": (), "1.2.840.10008.1.2.2": (),
    "1.2.840.10008.1.2.1.99": ("-xd",), "1.2.840.10008.1.2.5": ("-xr",),
    "1.2.840.10008.1.2.4.50": ("-xy",), "1.2.840.10008.1.2.4.51": ("-xx",),
    "1.2.840.10008.1.2.4.70": ("-xs",), "1.2.840.10008.1.2.4.80": ("-xt",),
    "1.2.840.10008.1.2.4.81": ("-xu",), "1.2.840.10008.1.2.4.90": ("-xv",),
    "1.2.840.10008.1.2.4.91": ("-xw",), "1.2.840.10008.1.2.4.100": ("-xm",),
    "1.2.840.10008.1.2.4.101": ("-xh",), "1.2.840.10008.1.2.4.102": ("-xn",),
    "1.2.840.10008.1.2.4.103": ("-xl",), "1.2.840.10008.1.2.4.104": ("-x2",),
    "1.2.840.10008.1.2.4.105": ("-x3",), "1.2.840.10008.1.2.4.106": ("-xo",),
    "1.2.840.10008.1.2.4.107": ("-x4",), "1.2.840.10008.1.2.4.108": ("-x5",),
}

_STORED = re.compile(r"Received Store Response \((Success|Warning)")


class StoreFailed(RuntimeError):
    """storescu did not get a success (or warning) status for every file."""


def _expand(files: Sequence[Path] | Path) -> list[Path]:
    targets = [files] if isinstance(files, Path) else list(files)
    out: list[Path] = []
    for target in targets:
        out.extend(sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target])
    return out


def storescu(
    files: Sequence[Path] | Path,
    port: int,
    *,
    host: str = "127.0.0.1",
    called_aet: str,
    calling_aet: str = "STORESCU",
    timeout: float = 300.0,
) -> list[subprocess.CompletedProcess[str]]:
    """Send DICOM files (folders are expanded) with DCMTK ``storescu``.

    Files are grouped by transfer syntax and each group goes over one association with
    ``-R`` and the option that proposes that syntax (``-xn`` for H.264 High Profile
    4.1, ...), so videos and JPEG photos are sent as they are, not converted.

    Returns
    -------
    list of CompletedProcess
        One per association.

    Raises
    ------
    StoreFailed
        A storescu run exited non-zero, or fewer success/warning responses than files
        came back (storescu's exit code alone misses failures in some modes).
    ValueError
        A file's transfer syntax has no storescu option.
    """
    from pydicom.filereader import read_file_meta_info

    exe = require_tool("storescu", "dcmtk")
    groups: dict[tuple[str, ...], list[Path]] = {}
    for path in _expand(files):
        syntax = str(read_file_meta_info(path).TransferSyntaxUID)
        if syntax not in STORESCU_SYNTAX_OPTIONS:
            raise ValueError(f"no storescu option proposes transfer syntax {syntax} ({path.name})")
        groups.setdefault(STORESCU_SYNTAX_OPTIONS[syntax], []).append(path)
    runs = []
    for options, paths in groups.items():
        args = [exe, "-v", "-aet", calling_aet, "-aec", called_aet, "-R", *options, host, str(port),
                *[str(p) for p in paths]]
        proc = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
        stored = len(_STORED.findall(proc.stdout + proc.stderr))
        if proc.returncode != 0 or stored != len(paths):
            raise StoreFailed(f"storescu stored {stored} of {len(paths)} files (exit "
                              f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        runs.append(proc)
    return runs


def echoscu(port: int, *, host: str = "127.0.0.1", called_aet: str, calling_aet: str = "ECHOSCU",
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK ``echoscu``; returns the finished process (exit code 0 = success)."""
    exe = require_tool("echoscu", "dcmtk")
    args = [exe, "-aet", calling_aet, "-aec", called_aet, host, str(port)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    """Terminate, then kill after ``grace`` seconds; return the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode
