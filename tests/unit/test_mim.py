"""ViT encoder and MDE/MAE masked-image pre-training (seed 002)."""

from __future__ import annotations

import pytest

from tests.dicomcheck import require_module

torch = require_module("torch")

from dicom_service.training.mim import MaskedImageModel, MIMConfig  # noqa: E402
from dicom_service.vision.vit import VIT_SIZES, ViTEncoder, patchify, random_masking  # noqa: E402


def _images(seed: int = 0, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = 0.05 * torch.rand(batch, 1, 64, 64, generator=g)
    # a bright vertical bar (an "implant") per image, for structure to learn
    for i in range(batch):
        base[i, :, 8:56, 10 + 8 * i:18 + 8 * i] += 1.0
    return base


def test_encoder_shapes_and_masking() -> None:
    enc = ViTEncoder(VIT_SIZES["test"])
    x = _images()
    assert enc(x).shape == (4, 16, 32)
    keep, mask = random_masking(4, 16, 0.25, generator=torch.Generator().manual_seed(1))
    assert keep.shape == (4, 12) and mask.sum(dim=1).tolist() == [4, 4, 4, 4]
    assert enc(x, keep).shape == (4, 12, 32)
    assert enc.feature_map(x).shape == (4, 32, 4, 4)
    assert patchify(x, 16).shape == (4, 16, 256)
    with pytest.raises(ValueError):
        random_masking(1, 16, 1.0)
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 1, 48, 48))


@pytest.mark.parametrize("objective", ["mde", "mae"])
def test_pretraining_loss_decreases(objective: str) -> None:
    torch.manual_seed(0)
    model = MaskedImageModel(ViTEncoder(VIT_SIZES["test"]), MIMConfig(objective=objective, decoder_dim=32,
                                                                      decoder_heads=2, decoder_depth=1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    x = _images()
    first = last = 0.0
    for step in range(60):
        loss, mask = model(x, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_teacher()
        if step < 5:
            first += loss.item() / 5
        if step >= 55:
            last += loss.item() / 5
        assert int(mask.sum()) == 4 * 4
    assert last < 0.85 * first, (first, last)


def test_mde_teacher_is_frozen_and_follows_by_ema() -> None:
    model = MaskedImageModel(ViTEncoder(VIT_SIZES["test"]), MIMConfig(objective="mde", teacher_momentum=0.5))
    assert model.teacher is not None and not any(p.requires_grad for p in model.teacher.parameters())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = next(model.teacher.parameters()).clone()
    model.update_teacher()
    after = next(model.teacher.parameters())
    assert torch.allclose(after, before + 0.5)
    assert MaskedImageModel(ViTEncoder(VIT_SIZES["test"]), MIMConfig(objective="mae")).teacher is None
    with pytest.raises(ValueError):
        MaskedImageModel(ViTEncoder(VIT_SIZES["test"]), MIMConfig(objective="simclr"))  # type: ignore[arg-type]
