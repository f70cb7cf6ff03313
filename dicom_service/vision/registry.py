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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from dicom_service.domain import ConfigError, compile_problem, precision_problem
from dicom_service.vision.baseline_implants import ElongatedObjectDetector
from dicom_service.vision.baseline_video import ClassicalVideoRuntime
from dicom_service.vision.bundle_names import INTERP_BUNDLE, NOPRIOR_BUNDLE, RESTORATION_BUNDLE, SAM_BUNDLE, SR_BUNDLE
from dicom_service.vision.runtime import RadiographRuntime, VideoRuntime
from dicom_service.vision.stabilisation import DEFAULT_SMOOTHING_SECONDS

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_CUDA_RE = re.compile(r"^cuda(:[0-9]+)?$")

def default_models_dir() -> Path:
    """The bundled ``models/`` folder of this repository."""
    return Path(__file__).resolve().parents[2] / "models"


def _implant_bundle(models_dir: Path) -> Path:
    bundle = models_dir / "implants"
    if not (bundle / "config.json").is_file():
        raise ConfigError(f"models.radiograph 'implants': no trained bundle in {bundle} "
                          "(train one with `dicom-service train implants`)")
    return bundle


def _learned_implants(device: str, models_dir: Path) -> RadiographRuntime:
    bundle = _implant_bundle(models_dir)
    try:
        from dicom_service.vision.implant_runtime import LearnedImplantRuntime
    except ImportError as exc:
        raise ConfigError(f"models.radiograph 'implants' needs torch and torchvision ({exc})") from None
    return LearnedImplantRuntime(bundle, device)


def _video_bundles(name: str, models_dir: Path) -> None:
    needed = [NOPRIOR_BUNDLE if "noprior" in name else RESTORATION_BUNDLE, SAM_BUNDLE]
    needed += [SR_BUNDLE] if "sr2" in name else []
    needed += [INTERP_BUNDLE] if "interp2" in name else []
    for bundle in needed:
        if not (models_dir / bundle / "config.json").is_file():
            raise ConfigError(f"models.video {name!r}: no trained bundle in {models_dir / bundle} "
                              "(train one with `dicom-service train video`)")


@dataclass(frozen=True)
class VideoOptions:
    """What the video runtimes take from the settings besides their name.

    Attributes
    ----------
    precision : str
        Compute precision of the learned models (``models.precision``).
    compile_models : bool
        torch.compile the restoration network (``models.compile``).
    smoothing_seconds : float
        Camera-path moving-average length of the stabilisation (``models.stabilisation_seconds``).
    segment_every : int
        The learned runtimes run the tooth model on every n-th frame (``models.segment_every``).
    """

    precision: str = "auto"
    compile_models: bool = False
    smoothing_seconds: float = DEFAULT_SMOOTHING_SECONDS
    segment_every: int = 1


def _learned_video(name: str) -> Callable[[str, Path, VideoOptions], VideoRuntime]:
    """Factory of the learned runtime whose options are spelled in ``name``."""

    def build(device: str, models_dir: Path, options: VideoOptions) -> VideoRuntime:
        _video_bundles(name, models_dir)
        check_precision(options.precision, device)
        check_compile(options.compile_models, device)
        try:
            from dicom_service.vision.video_runtime import LearnedVideoRuntime
        except ImportError as exc:
            raise ConfigError(f"models.video {name!r} needs torch and segment-anything ({exc})") from None
        return LearnedVideoRuntime(models_dir, device, stabilise="unstabilised" not in name,
                                   smoothing_seconds=options.smoothing_seconds, upscale="sr2" in name,
                                   interpolate="interp2" in name, prior="noprior" not in name,
                                   precision=options.precision, compile_models=options.compile_models,
                                   segment_every=options.segment_every)

    return build


#: Video runtimes by name; each factory takes the resolved device ("cpu" or "cuda[:N]"),
#: the folder of bundled models and the :class:`VideoOptions` (the classical runtimes use
#: only the smoothing length).
VIDEO_RUNTIMES: Mapping[str, Callable[[str, Path, VideoOptions], VideoRuntime]] = MappingProxyType({
    "baseline": lambda device, models, options: ClassicalVideoRuntime(smoothing_seconds=options.smoothing_seconds),
    "baseline-unstabilised": lambda device, models, options: ClassicalVideoRuntime(
        stabilise=False, smoothing_seconds=options.smoothing_seconds),
    "learned": _learned_video("learned"),
    "learned-unstabilised": _learned_video("learned-unstabilised"),
    "learned-sr2": _learned_video("learned-sr2"),
    "learned-interp2": _learned_video("learned-interp2"),
    "learned-sr2-interp2": _learned_video("learned-sr2-interp2"),
    "learned-noprior": _learned_video("learned-noprior"),
})

#: Radiograph runtimes by name; each factory takes the resolved device and models folder.
RADIOGRAPH_RUNTIMES: Mapping[str, Callable[[str, Path], RadiographRuntime]] = MappingProxyType({
    "baseline": lambda device, models: ElongatedObjectDetector(),
    "implants": _learned_implants,
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


def _lookup(kind: str, table: Mapping[str, Callable[..., _R]], name: str) -> Callable[..., _R]:
    factory = table.get(name)
    if factory is None:
        choices = ", ".join(sorted(table))
        raise ConfigError(f"models.{kind}: unknown runtime {name!r}; valid choices: {choices}")
    return factory


def build_video_runtime(name: str = "baseline", device: str = "auto",
                        models_dir: Path | None = None, precision: str = "auto",
                        compile_models: bool = False,
                        smoothing_seconds: float = DEFAULT_SMOOTHING_SECONDS,
                        segment_every: int = 1) -> VideoRuntime:
    """Build the video runtime called ``name`` for ``device``.

    ``precision`` is the learned runtimes' compute precision
    (:mod:`~dicom_service.vision.precision`: ``auto``, ``float32``, ``bfloat16``, ``float16``);
    ``compile_models`` torch.compiles their restoration network; ``smoothing_seconds`` is
    the stabilisation's camera-path smoothing length (all runtimes); ``segment_every``
    runs the learned runtimes' tooth model on every n-th frame only (the masks of the
    frames between carried by optical flow).

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones), unusable device, a
        precision the device cannot run (float16 on the CPU), compilation asked for
        on a CPU without a C++ compiler, a smoothing length that is not > 0, or
        ``segment_every`` below 1.
    """
    factory = _lookup("video", VIDEO_RUNTIMES, name)
    if not smoothing_seconds > 0:
        raise ConfigError(f"models.stabilisation_seconds must be > 0, got {smoothing_seconds}")
    if segment_every < 1:
        raise ConfigError(f"models.segment_every must be >= 1, got {segment_every}")
    resolved = resolve_device(device)
    runtime = factory(resolved, models_dir or default_models_dir(),
                      VideoOptions(precision, compile_models, float(smoothing_seconds), int(segment_every)))
    log.info("video runtime %r (%s) on %s", name, runtime.info.name, resolved)
    return runtime


def build_radiograph_runtime(name: str = "baseline", device: str = "auto",
                             models_dir: Path | None = None) -> RadiographRuntime:
    """Build the radiograph runtime called ``name`` for ``device``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones), unusable device, or a
        learned runtime without its trained bundle.
    """
    factory = _lookup("radiograph", RADIOGRAPH_RUNTIMES, name)
    resolved = resolve_device(device)
    runtime = factory(resolved, models_dir or default_models_dir())
    log.info("radiograph runtime %r (%s) on %s", name, runtime.info.name, resolved)
    return runtime


def check_precision(precision: str, device: str) -> None:
    """Fail early on a compute precision the resolved ``device`` cannot run.

    Parameters
    ----------
    precision : str
        ``models.precision``: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
    device : str
        A resolved device (:func:`resolve_device`): ``cpu`` or ``cuda[:N]``.

    Raises
    ------
    ConfigError
        An unknown precision, or float16 without a CUDA device.
    """
    problem = precision_problem(precision, device)
    if problem is not None:
        raise ConfigError(f"models.precision: {problem}")


def check_compile(compile_models: bool, device: str) -> None:
    """Fail early when ``models.compile`` cannot work on the resolved ``device``
    (:func:`~dicom_service.domain.compile_problem`).

    Raises
    ------
    ConfigError
        Compilation asked for on a CPU without a C++ compiler.
    """
    problem = compile_problem(compile_models, device)
    if problem is not None:
        raise ConfigError(f"models.compile: {problem}")


def check_runtime_names(video: str, radiograph: str, models_dir: Path | None = None) -> None:
    """Fail early (at start, before anything listens) on unknown runtime names or a
    learned runtime whose trained bundle is missing.

    Raises
    ------
    ConfigError
        Naming the bad setting and the valid choices.
    """
    _lookup("video", VIDEO_RUNTIMES, video)
    _lookup("radiograph", RADIOGRAPH_RUNTIMES, radiograph)
    if radiograph == "implants":
        _implant_bundle(models_dir or default_models_dir())
    if video.startswith("learned"):
        _video_bundles(video, models_dir or default_models_dir())
