"""Masked image modelling pre-training of the ViT encoder: MDE (seed 002) and MAE.

Both objectives share the MAE architecture: random patches are masked (patch 16,
ratio 25% by default, as seed 002 found best for dental radiographs); the encoder sees
only the visible patches; a light decoder receives the encoded tokens plus a learnable
mask token at every masked position, with position embeddings; a linear head predicts
a target per masked patch. The decoder and head are discarded after pre-training.

* ``mae``: the target is the patch's pixels, normalised per patch (MAE's
  ``norm_pix_loss``); the loss is the mean squared error over masked patches.
* ``mde`` (Masked Deep Embedding): the target is the patch's **deep embedding**, not its
  pixels. Seed 002 does not say which network computes it; we take the tokens of a
  momentum (EMA) copy of the encoder run on the whole, unmasked image, layer-normalised
  without affine parameters, with gradients stopped — the data2vec/BEiT-v2 family of
  "predict the embedding" objectives that seed 002 cites. The loss is the mean squared
  distance between predicted and target embeddings over masked patches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dicom_service.vision.vit import Block, ViTEncoder, patchify, random_masking, sincos_position_embedding

Objective = Literal["mde", "mae"]


@dataclass(frozen=True)
class MIMConfig:
    """Pre-training hyper-parameters (seed 002: patch 16, mask ratio 25%)."""

    objective: Objective = "mde"
    mask_ratio: float = 0.25
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    teacher_momentum: float = 0.996


class MaskedImageModel(nn.Module):
    """Encoder + decoder + linear head for MDE or MAE pre-training.

    Parameters
    ----------
    encoder : ViTEncoder
        The encoder to pre-train (kept; read it back with ``model.encoder``).
    config : MIMConfig
    """

    def __init__(self, encoder: ViTEncoder, config: MIMConfig) -> None:
        super().__init__()
        if config.objective not in ("mde", "mae"):
            raise ValueError(f"objective must be 'mde' or 'mae', got {config.objective!r}")
        self.encoder = encoder
        self.config = config
        enc = encoder.config
        self.decoder_embed = nn.Linear(enc.dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_position_embedding(enc.grid, config.decoder_dim),
                             persistent=False)
        self.decoder = nn.ModuleList(Block(config.decoder_dim, config.decoder_heads, 4.0)
                                     for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        out = enc.dim if config.objective == "mde" else enc.patch * enc.patch * enc.in_chans
        self.head = nn.Linear(config.decoder_dim, out)
        self.teacher: ViTEncoder | None = None
        if config.objective == "mde":
            self.teacher = copy.deepcopy(encoder)
            self.teacher.requires_grad_(False)

    def _decode(self, visible: torch.Tensor, keep: torch.Tensor, tokens: int) -> torch.Tensor:
        b = visible.shape[0]
        x = self.mask_token.expand(b, tokens, -1).clone()
        x.scatter_(1, keep[..., None].expand(-1, -1, x.shape[-1]), self.decoder_embed(visible))
        x = x + self.decoder_pos[None]
        for block in self.decoder:
            x = block(x)
        return self.head(self.decoder_norm(x))

    def _targets(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.objective == "mae":
            pixels = patchify(images, self.encoder.config.patch)
            mean = pixels.mean(dim=-1, keepdim=True)
            var = pixels.var(dim=-1, keepdim=True)
            return (pixels - mean) / (var + 1e-6).sqrt()
        if self.teacher is None:  # pragma: no cover - set in __init__ for mde
            raise RuntimeError("MDE needs its teacher encoder")
        with torch.no_grad():
            self.teacher.eval()
            deep = self.teacher(images)
            return F.layer_norm(deep, deep.shape[-1:])

    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked prediction loss for a batch.

        Parameters
        ----------
        images : torch.Tensor
            ``(B, C, H, W)`` float, the encoder's image size.

        Returns
        -------
        loss : torch.Tensor
            Scalar, mean over masked patches.
        mask : torch.Tensor
            ``(B, N)`` bool, the masked patches of this batch.
        """
        tokens = self.encoder.config.grid ** 2
        keep, mask = random_masking(images.shape[0], tokens, self.config.mask_ratio,
                                    generator=generator, device=images.device)
        prediction = self._decode(self.encoder(images, keep), keep, tokens)
        target = self._targets(images)
        per_patch = ((prediction - target) ** 2).mean(dim=-1)
        return per_patch[mask].mean(), mask

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA step of the MDE teacher toward the encoder (no-op for MAE)."""
        if self.teacher is None:
            return
        m = self.config.teacher_momentum
        for t, s in zip(self.teacher.parameters(), self.encoder.parameters(), strict=True):
            t.mul_(m).add_(s.detach(), alpha=1.0 - m)
