"""A correction on one frame carries to its neighbours (bundled tooth SAM + DIS flow)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("segment_anything")

from dicom_service.training.image_metrics import mask_iou  # noqa: E402
from dicom_service.training.video_phantoms import clip_seed, render_clip  # noqa: E402
from dicom_service.vision.mask_propagation import propagate_correction  # noqa: E402
from dicom_service.vision.registry import default_models_dir  # noqa: E402
from dicom_service.vision.tooth_predictor import ToothSegmenter  # noqa: E402
from dicom_service.vision.tooth_sam import load_sam_bundle  # noqa: E402


@pytest.fixture(scope="module")
def segmenter() -> ToothSegmenter:
    return ToothSegmenter(load_sam_bundle(default_models_dir() / "tooth_sam")[0])


def test_correction_on_the_middle_frame_reaches_both_ends(segmenter: ToothSegmenter) -> None:
    clip = render_clip(clip_seed(0, "test", 7), frames=5, teeth=True)
    masks = propagate_correction(segmenter, clip.degraded, 2, clip.masks[2])
    assert sorted(masks) == [0, 1, 2, 3, 4]
    assert masks[2] is not None and np.array_equal(masks[2], clip.masks[2])
    for t in (0, 1, 3, 4):
        assert mask_iou(masks[t], clip.masks[t]) > 0.9, t
    near = propagate_correction(segmenter, clip.degraded, 0, clip.masks[0], radius=1)
    assert sorted(near) == [0, 1]


def test_bad_arguments(segmenter: ToothSegmenter) -> None:
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="outside the clip"):
        propagate_correction(segmenter, frames, 2, np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match="corrected mask"):
        propagate_correction(segmenter, frames, 0, np.zeros((16, 32), bool))
    with pytest.raises(ValueError, match="radius"):
        propagate_correction(segmenter, frames, 0, np.zeros((32, 32), bool), radius=-1)
    with pytest.raises(ValueError, match="uint8"):
        propagate_correction(segmenter, frames.astype(float), 0, np.zeros((32, 32), bool))
