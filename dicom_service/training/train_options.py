"""Options of an implant training run (no torch import: the CLI parses them without it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Seed 002's pre-training base learning rate, scaled by ``batch / 256`` (MAE rule).
PRETRAIN_BASE_LR = 1.5e-4

Init = Literal["mde", "mae", "random"]
#: Names of :data:`dicom_service.vision.vit.VIT_SIZES` (kept equal by a test).
VIT_NAMES: tuple[str, ...] = ("test", "cpu", "tiny", "small", "base")


@dataclass(frozen=True)
class TrainOptions:
    """Every setting of a training run (the ``train implants`` options).

    ``pretrain_lr`` None means seed 002's rule ``1.5e-4 * batch_size / 256``.
    ``limit_images`` keeps the first N images of each split (smoke runs, ablations).
    """

    init: Init = "mde"
    vit: str = "cpu"
    img_size: int = 416
    pretrain_epochs: int = 100
    epochs: int = 50
    identifier_epochs: int = 40
    warmup_epochs: int = 10
    batch_size: int = 8
    mask_ratio: float = 0.25
    pretrain_lr: float | None = None
    lr: float = 1e-4
    seed: int = 0
    limit_images: int | None = None

    @property
    def peak_pretrain_lr(self) -> float:
        """The pre-training learning rate actually used."""
        return self.pretrain_lr or PRETRAIN_BASE_LR * self.batch_size / 256

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        for name in ("pretrain_epochs", "epochs", "identifier_epochs", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("lr", "pretrain_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if self.init not in ("mde", "mae", "random"):
            raise ValueError(f"--init must be mde, mae or random, got {self.init!r}")
        if self.vit not in VIT_NAMES:
            raise ValueError(f"--vit must be one of {', '.join(VIT_NAMES)}, got {self.vit!r}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.img_size < 32 or self.img_size % 16:
            raise ValueError(f"--img-size must be a multiple of 16 and >= 32, got {self.img_size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        if self.limit_images is not None and self.limit_images < 1:
            raise ValueError("--limit-images must be >= 1")
