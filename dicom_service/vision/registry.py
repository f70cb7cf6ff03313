"""Name → runtime factories (the ``build_sam`` registry pattern).

Pipelines never construct runtimes themselves: the settings name one
(``"baseline"`` today; learned models are added here as they arrive) and the
registry builds it for a device. ``torch`` is optional: it is imported lazily, only
to resolve ``device="auto"`` or a CUDA device, and is never a dependency.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from dicom_service.domain import ConfigError
from dicom_service.vision.baseline_implants import ElongatedObjectDetector
from dicom_service.vision.baseline_video import ClassicalVideoRuntime
from dicom_service.vision.runtime import RadiographRuntime, VideoRuntime

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_CUDA_RE = re.compile(r"^cuda(:[0-9]+)?$")

#: Video runtimes by name; each factory takes the resolved device ("cpu" or "cuda[:N]").
VIDEO_RUNTIMES: Mapping[str, Callable[[str], VideoRuntime]] = MappingProxyType({
    "baseline": lambda device: ClassicalVideoRuntime(),
    "baseline-unstabilised": lambda device: ClassicalVideoRuntime(stabilise=False),
})

#: Radiograph runtimes by name; each factory takes the resolved device.
RADIOGRAPH_RUNTIMES: Mapping[str, Callable[[str], RadiographRuntime]] = MappingProxyType({
    "baseline": lambda device: ElongatedObjectDetector(),
})


def _cuda_available() -> bool:
    """True if torch can be imported and sees a CUDA device (torch is optional)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """Turn a configured device into a concrete one.

    Parameters
    ----------
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    str
        ``"cuda"`` for ``"auto"`` when torch is installed and sees a GPU, else
        ``"cpu"``; ``"cpu"``/``"cuda[:N]"`` are returned unchanged.

    Raises
    ------
    ConfigError
        Unknown device string, or a CUDA device requested where none is usable.
    """
    value = device.strip().lower()
    if value == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if value == "cpu":
        return "cpu"
    if _CUDA_RE.match(value):
        if not _cuda_available():
            raise ConfigError(f"device {device!r} requested but torch with CUDA is not available")
        return value
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _lookup(kind: str, table: Mapping[str, Callable[[str], _R]], name: str) -> Callable[[str], _R]:
    factory = table.get(name)
    if factory is None:
        choices = ", ".join(sorted(table))
        raise ConfigError(f"models.{kind}: unknown runtime {name!r}; valid choices: {choices}")
    return factory


def build_video_runtime(name: str = "baseline", device: str = "auto") -> VideoRuntime:
    """Build the video runtime called ``name`` for ``device``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones) or unusable device.
    """
    factory = _lookup("video", VIDEO_RUNTIMES, name)
    resolved = resolve_device(device)
    runtime = factory(resolved)
    log.info("video runtime %r (%s) on %s", name, runtime.info.name, resolved)
    return runtime


def build_radiograph_runtime(name: str = "baseline", device: str = "auto") -> RadiographRuntime:
    """Build the radiograph runtime called ``name`` for ``device``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones) or unusable device.
    """
    factory = _lookup("radiograph", RADIOGRAPH_RUNTIMES, name)
    resolved = resolve_device(device)
    runtime = factory(resolved)
    log.info("radiograph runtime %r (%s) on %s", name, runtime.info.name, resolved)
    return runtime


def check_runtime_names(video: str, radiograph: str) -> None:
    """Fail early (at start, before anything listens) on unknown runtime names.

    Raises
    ------
    ConfigError
        Naming the bad setting and the valid choices.
    """
    _lookup("video", VIDEO_RUNTIMES, video)
    _lookup("radiograph", RADIOGRAPH_RUNTIMES, radiograph)
