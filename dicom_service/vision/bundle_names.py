"""Folder names of the video model bundles under a models folder.

One spelling for the runtime (:mod:`~dicom_service.vision.video_runtime`), the registry's
presence checks (:mod:`~dicom_service.vision.registry`, which must not import torch),
``train video`` and ``eval video``. This module imports nothing.
"""

from __future__ import annotations

#: The tiny tooth SAM (seed 000's interactive segmentation).
SAM_BUNDLE = "tooth_sam"
#: The restoration model with the tooth prior (the default ``learned`` runtime).
RESTORATION_BUNDLE = "video_restoration"
#: The same network without the tooth prior (``learned-noprior``, the ablation).
NOPRIOR_BUNDLE = "video_restoration_noprior"
#: The x2 super-resolution and x2 frame-interpolation models.
SR_BUNDLE, INTERP_BUNDLE = "video_sr2", "video_interp2"
