"""The narrow interface between pipelines and vision models.

Pipelines only ever talk to a :class:`VideoRuntime` or a :class:`RadiographRuntime`;
which implementation answers (classical baseline, learned model, CPU or GPU) is chosen
by :func:`dicom_service.vision.registry.build_video_runtime` and
:func:`dicom_service.vision.registry.build_radiograph_runtime` from the settings.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from dicom_service.domain import AlgorithmInfo, RadiographResult, VideoEnhancement


@runtime_checkable
class VideoRuntime(Protocol):
    """Restores and enhances intraoral camera frames."""

    info: AlgorithmInfo

    def enhance(self, frames: np.ndarray, fps: float) -> VideoEnhancement:
        """Enhance a clip.

        Parameters
        ----------
        frames : np.ndarray
            ``(T, H, W, 3)`` uint8 RGB, ``T >= 1``.
        fps : float
            Frame rate of the clip (1.0 for a still photograph).
        """
        ...


@runtime_checkable
class RadiographRuntime(Protocol):
    """Finds implants on a radiograph."""

    info: AlgorithmInfo

    def detect(self, image: np.ndarray) -> RadiographResult:
        """Detect implants.

        Parameters
        ----------
        image : np.ndarray
            ``(rows, columns)`` float32 in ``[0, 1]`` where 1 is the most radiopaque
            (white on a normal radiograph), after Modality/VOI LUT and MONOCHROME1
            inversion.
        """
        ...
