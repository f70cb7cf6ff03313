"""Stage-1 part detector: ViT + simple feature pyramid + Mask R-CNN (torchvision)."""

from __future__ import annotations

from tests.dicomcheck import require_module

torch = require_module("torch")
require_module("torchvision")

from dicom_service.vision.part_detector import PART_CLASSES, DetectorConfig, build_part_detector  # noqa: E402
from dicom_service.vision.vit import ViTConfig, ViTEncoder  # noqa: E402


def _target(x: int) -> dict:
    boxes = torch.tensor([[x, 10, x + 12, 30], [x, 30, x + 12, 50], [x, 50, x + 12, 62]], dtype=torch.float32)
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    return {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}


def test_training_losses_and_eval_outputs() -> None:
    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=64, patch=16, dim=32, depth=1, heads=2))
    model = build_part_detector(encoder, DetectorConfig(fpn_channels=32))
    images = [torch.rand(1, 64, 64), torch.rand(1, 64, 64)]
    model.train()
    losses = model(images, [_target(10), _target(30)])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    total = sum(losses.values())
    total.backward()
    assert encoder.patch_embed.weight.grad is not None  # gradients reach the ViT
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    assert len(PART_CLASSES) == 4
