"""Small typed values that cross module boundaries, and the project's exceptions.

Coordinate convention used everywhere in this package: image arrays are indexed
``[row, column]`` (``[y, x]``); boxes are ``(x0, y0, x1, y1)`` in pixel units of the
source image, ``x`` being the column and ``y`` the row, with ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import enum
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

#: Compute precision of the learned video models (see :mod:`dicom_service.vision.precision`).
Precision = Literal["auto", "float32", "bfloat16", "float16"]
#: The precisions a user can ask for, ``auto`` first.
PRECISIONS: tuple[str, ...] = get_args(Precision)


def precision_problem(precision: str, device: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (``cpu``, ``cuda`` or ``cuda:N``), or None.

    The one rule behind the settings check at start and the runtime's own check:
    the precision must be one of :data:`PRECISIONS`, and float16 needs CUDA (the CPU has
    no fast float16 kernels).
    """
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}: precision must be one of the valid choices: {', '.join(PRECISIONS)}"
    if precision == "float16" and not device.startswith("cuda"):
        return f"float16 needs a CUDA device, but the device is {device!r}; use auto, bfloat16 or float32"
    return None


#: C++ compilers torch.compile's CPU backend (inductor) can build its kernels with.
CXX_COMPILERS = ("c++", "g++", "clang++")


def compile_problem(compile_models: bool, device: str) -> str | None:
    """Why ``models.compile`` cannot work on ``device``, or None.

    On the CPU, torch.compile builds its kernels with a C++ compiler, which must be on
    ``PATH`` (or named by the ``CXX`` environment variable); on CUDA it uses Triton,
    which the CUDA builds of torch ship.
    """
    if not compile_models or device.startswith("cuda"):
        return None
    named = os.environ.get("CXX")
    if any(shutil.which(c) for c in ((named,) if named else ()) + CXX_COMPILERS):
        return None
    return (f"torch.compile on the CPU needs a C++ compiler on PATH ({', '.join(CXX_COMPILERS)}); "
            "install one (Debian: g++) or set models.compile to false")


# --------------------------------------------------------------------------- errors
class ServiceError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ServiceError):
    """The configuration is invalid; the message names the bad key."""


class InvalidUIDError(ServiceError, ValueError):
    """A DICOM UID is malformed (and must never reach a file path)."""


class StorageFullError(ServiceError):
    """The storage volume is below the configured free-space floor."""


class InputError(ServiceError):
    """The input cannot be processed, and retrying will not help.

    Jobs that fail with this error go straight to ``failed`` without retries.
    """


class MediaError(InputError):
    """Pixel data or a video stream cannot be decoded."""


class UnsupportedInputError(InputError):
    """The instance is valid DICOM but not something this workflow handles
    (for example a colour photograph routed to the radiograph workflow)."""


class DispatchError(ServiceError):
    """Sending results to a destination failed (transient: it is retried)."""


# --------------------------------------------------------------------------- routing
class Workflow(str, enum.Enum):
    """What the node does with a study."""

    VIDEO = "video"
    RADIOGRAPH = "radiograph"
    IGNORE = "ignore"


@dataclass(frozen=True)
class InstanceMeta:
    """What the index keeps about one received instance (no patient data).

    Attributes
    ----------
    study_uid, series_uid, sop_instance_uid, sop_class_uid, transfer_syntax_uid : str
        DICOM identifiers, already validated.
    modality : str
        (0008,0060), may be empty.
    body_part : str
        (0018,0015), may be empty.
    calling_ae : str
        AE title of the peer that sent it ("" for files imported offline).
    path : Path
        Where the bytes lie, as received.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    body_part: str
    calling_ae: str
    path: Path


# --------------------------------------------------------------------------- jobs
class JobState(str, enum.Enum):
    """Life cycle of a job.

    ``queued`` (waiting, possibly until a back-off time) → ``running`` →
    ``succeeded``; a transient error puts it back to ``queued`` with a later
    ``not_before``; after ``max_attempts`` it is ``dead``. A permanent input error
    (:class:`InputError`) makes it ``failed`` at once. ``cancelled`` is set by a user.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


class JobKind(str, enum.Enum):
    """``process`` runs a workflow on a study; ``dispatch`` sends result files;
    ``correct`` applies a dentist's correction to the tooth masks of a processed instance;
    ``restore`` enhances that instance again with the corrected masks (run by the
    processing workers, within their memory budget)."""

    PROCESS = "process"
    DISPATCH = "dispatch"
    CORRECT = "correct"
    RESTORE = "restore"


@dataclass
class Attempt:
    """One try of a job, kept with its log."""

    number: int
    started_at: float
    finished_at: float | None
    ok: bool | None
    error: str | None
    log: str


@dataclass
class Job:
    """A persistent unit of work.

    ``key`` is the idempotency key: at most one job exists per key (for a process
    job, ``study_uid/workflow/<fingerprint of its instance set>``).
    """

    id: int
    kind: JobKind
    key: str
    study_uid: str
    workflow: Workflow | None
    state: JobState
    attempts: int
    max_attempts: int
    not_before: float
    created_at: float
    updated_at: float
    error: str | None
    payload: dict
    attempt_log: list[Attempt] = field(default_factory=list)


# --------------------------------------------------------------------------- vision results
@dataclass(frozen=True)
class AlgorithmInfo:
    """Identifies the algorithm that produced a result (written to SR/SEG/PR).

    ``family`` is a short word: ``"baseline"`` for classical baselines, ``"ai"`` for
    learned models; writers map it to the proper code.
    """

    name: str
    version: str
    family: str = "baseline"
    parameters: str = ""


@dataclass(frozen=True)
class ImplantPart:
    """A detected design part of an implant (seed 002: coronal, middle, apical)."""

    label: str
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class ImplantFinding:
    """One detected implant on a radiograph.

    Attributes
    ----------
    box : tuple of float
        ``(x0, y0, x1, y1)`` in source-image pixels (x = column, y = row).
    score : float
        Detection confidence in ``[0, 1]``.
    parts : tuple of ImplantPart
        Detected design parts belonging to this implant (may be empty).
    attributes : dict
        Design attributes, e.g. ``{"body": "tapered"}`` (may be empty).
    system_top : tuple of (str, float)
        Implant system candidates with probabilities, best first (may be empty).
    axis : tuple of float or None
        Long axis ``(x_a, y_a, x_b, y_b)`` in source pixels, if known.
    origin : str
        ``"ai"``: found by the algorithm (``score`` is its certainty); ``"person"``: a box a
        dentist drew in a review (``score`` means nothing).
    system_by_person : bool
        ``system_top`` holds the one system a dentist named in a review (its probability
        means nothing).
    """

    box: tuple[float, float, float, float]
    score: float
    parts: tuple[ImplantPart, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    system_top: tuple[tuple[str, float], ...] = ()
    axis: tuple[float, float, float, float] | None = None
    origin: str = "ai"
    system_by_person: bool = False


@dataclass
class RadiographResult:
    """What a radiograph runtime returns for one image (shape ``(rows, columns)``)."""

    findings: list[ImplantFinding]
    image_shape: tuple[int, int]
    algorithm: AlgorithmInfo


@dataclass
class EnhancementOutcome:
    """What a video runtime reports about a clip besides the frames and masks (a streamed
    clip's frames and masks went to a sink as they were made).

    Attributes
    ----------
    fps : float
        Frame rate of the enhanced frames.
    algorithm : AlgorithmInfo
    steps : list of str
        Human-readable processing steps, in order (go into the SR).
    metrics : dict
        Named scalar measurements (e.g. mean tooth-area fraction, residual shake).
    """

    fps: float
    algorithm: AlgorithmInfo
    steps: list[str]
    metrics: dict[str, float]


@dataclass(kw_only=True)
class VideoEnhancement(EnhancementOutcome):
    """What a video runtime returns for one clip held in memory: the outcome, and

    Attributes
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB, the enhanced frames (same size as the input
        unless ``scale`` says otherwise).
    tooth_masks : np.ndarray
        ``(T, H_in, W_in)`` bool, tooth masks on the *input* frames.
    """

    frames: np.ndarray
    tooth_masks: np.ndarray
