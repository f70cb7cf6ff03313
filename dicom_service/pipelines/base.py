"""Types shared by the pipelines: what a pipeline returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO

from pydicom import dcmwrite
from pydicom.dataset import Dataset

#: A pipeline reports progress with a callable taking one line of text; the worker
#: stores the lines in the attempt log and may raise to interrupt the job.
ProgressLog = Callable[[str], None]


def no_log(_: str) -> None:
    """A :data:`ProgressLog` that discards everything."""


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object produced by a pipeline.

    ``kind`` is one of ``"video"``, ``"sc"``, ``"seg"``, ``"sr"``, ``"pr"`` (the
    names used in ``destinations[].results``).
    """

    kind: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        """The object's SOP Instance UID."""
        return str(self.dataset.SOPInstanceUID)

    def write(self, file: BinaryIO) -> None:
        """Write the object as a DICOM file (preamble and meta header included) to ``file``.

        Pixel Data held in a file (a streamed video's MP4, its Segmentation's packed bits)
        is copied across in chunks, never read whole into memory."""
        dcmwrite(file, self.dataset, enforce_file_format=True)

    def to_bytes(self) -> bytes:
        """The object encoded as a DICOM file, in memory (:meth:`write` streams it)."""
        buffer = BytesIO()
        self.write(buffer)
        return buffer.getvalue()


@dataclass
class PipelineOutput:
    """Everything a pipeline produced for one job.

    ``summary`` is JSON-serialisable: per source instance, what was found or done.
    """

    objects: list[ResultObject] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
