"""A plain Vision Transformer encoder for radiographs, with MAE-style random masking.

Shapes: images are ``(B, C, H, W)`` float tensors (``C = 1`` for radiographs), split
into non-overlapping ``patch × patch`` patches in row-major order (patch index
``i = row * (W // patch) + column``). Tokens are ``(B, N, D)``. There is no class token:
the detector and the pre-training heads work on patch tokens only.

Like ``segment_anything``'s split, the module holds layers only; builders with named
sizes are in :data:`VIT_SIZES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`ViTEncoder`."""

    img_size: int = 416
    patch: int = 16
    in_chans: int = 1
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch


#: Named sizes. ``cpu`` is what the bundled model was trained with on two CPU cores;
#: ``tiny`` / ``small`` are ViT-Ti / ViT-S widths; ``base`` is seed 002's ViT-B.
VIT_SIZES: dict[str, ViTConfig] = {
    "test": ViTConfig(img_size=64, patch=16, dim=32, depth=2, heads=2),
    "cpu": ViTConfig(dim=128, depth=4, heads=4),
    "tiny": ViTConfig(dim=192, depth=6, heads=3),
    "small": ViTConfig(dim=384, depth=12, heads=6),
    "base": ViTConfig(dim=768, depth=12, heads=12),
}


def sincos_position_embedding(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``(grid * grid, dim)``."""
    if dim % 4:
        raise ValueError(f"embedding dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    out_r = rows.reshape(-1, 1) * omega[None]
    out_c = cols.reshape(-1, 1) * omega[None]
    return torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, N, patch * patch * C)`` in row-major patch order."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_masking(batch: int, tokens: int, ratio: float, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Choose which patches stay visible, MAE style (uniform random per image).

    Returns
    -------
    keep : torch.Tensor
        ``(B, N_keep)`` long indices of visible patches, ``N_keep = round(N * (1 - ratio))``.
    mask : torch.Tensor
        ``(B, N)`` bool, True where a patch is masked.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    n_keep = max(1, int(round(tokens * (1.0 - ratio))))
    noise = torch.rand(batch, tokens, generator=generator, device=device)
    keep = noise.argsort(dim=1)[:, :n_keep]
    mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Patch embedding, fixed position embedding and transformer blocks.

    ``forward(images, keep=None)`` returns ``(B, N, D)`` tokens, or only the visible
    ``(B, N_keep, D)`` when ``keep`` indices are given (MAE-style encoding).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(config.in_chans, config.dim, config.patch, config.patch)
        self.register_buffer("pos", sincos_position_embedding(config.grid, config.dim), persistent=False)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus positions, ``(B, N, D)``."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        if x.shape[1] != self.pos.shape[0]:
            raise ValueError(f"expected {self.config.img_size}x{self.config.img_size} images, "
                             f"got {tuple(images.shape[-2:])}")
        return x + self.pos[None]

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(images)
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens as a ``(B, D, grid, grid)`` map, for a detection neck (FPN)."""
        tokens = self.forward(images)
        b, n, d = tokens.shape
        side = int(math.isqrt(n))
        return tokens.transpose(1, 2).reshape(b, d, side, side)
