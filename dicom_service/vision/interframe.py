"""Interframe enhancement (seed 000): learned x2 super-resolution and x2 frame interpolation.

* :class:`SuperResolution2x`: residual blocks on the low-resolution frame, a pixel shuffle
  to twice the size, added to the bicubic upscale (ESPCN/EDSR style, small).
* :class:`FrameInterpolator2x`: the middle frame between two frames. DIS flows both
  ways give the flows from the middle to each end under linear motion (Super SloMo's
  approximation, ``t = 1/2``); both ends are warped to the middle and a
  :class:`~dicom_service.vision.restoration_net.RestorationBranch` refines their
  average from the two warped frames and their difference.

Both run after restoration, on restored frames; both are saved as safetensors bundles.
Tensors are ``(N, C, H, W)`` float32 RGB in ``[0, 1]``; flows ``(N, 2, H, W)`` (x, y) in
pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dicom_service.vision.optical_flow import DisFlow
from dicom_service.vision.restoration_model import flow_to_tensor, to_tensor, to_uint8
from dicom_service.vision.restoration_net import RestorationBranch, pad_to_multiple, warp
from dicom_service.vision.safetensors_io import read_bundle, write_bundle

SR_FILE, INTERP_FILE = "sr2.safetensors", "interp2.safetensors"


class SuperResolution2x(nn.Module):
    """x2 super-resolution: ``bicubic(x) + shuffle(body(x))``.

    Parameters
    ----------
    width : int
        Channels of the residual body.
    blocks : int
        Residual blocks.
    """

    def __init__(self, width: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.width, self.blocks = width, blocks
        self.head = nn.Conv2d(3, width, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Sequential(nn.Conv2d(width, 12, 3, padding=1), nn.PixelShuffle(2))
        nn.init.zeros_(self.tail[0].weight)  # starts as bicubic upscaling
        nn.init.zeros_(self.tail[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` → ``(N, 3, 2H, 2W)`` (not clamped)."""
        base = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        feats = self.head(x)
        return base + self.tail(feats + self.body(feats))


def middle_flows(forward: torch.Tensor, backward: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows from the middle frame to frame 0 and to frame 1 (linear motion, t = 1/2).

    Parameters
    ----------
    forward, backward : torch.Tensor
        ``(N, 2, H, W)`` flows frame 0 → 1 and frame 1 → 0.
    """
    to_first = -0.25 * forward + 0.25 * backward
    return to_first, -to_first


class FrameInterpolator2x(nn.Module):
    """The middle frame between two frames.

    Parameters
    ----------
    width : int
        Channels of the refinement branch (at half resolution).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.refine = RestorationBranch(9, width, 1)

    def forward(self, first: torch.Tensor, second: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor,
                refine: bool = True) -> torch.Tensor:
        """Middle frame ``(N, 3, H, W)`` (H, W multiples of 16; not clamped).

        Parameters
        ----------
        first, second : torch.Tensor
            ``(N, 3, H, W)`` the two frames.
        forward, backward : torch.Tensor
            ``(N, 2, H, W)`` flows first → second and second → first.
        refine : bool
            False returns the flow-warped average alone (the classical baseline).
        """
        to_first, to_second = middle_flows(forward, backward)
        a, b = warp(first, to_first), warp(second, to_second)
        if not refine:
            return 0.5 * (a + b)
        x = torch.cat([a, b, (a - b).abs()], dim=1)
        branch = self.refine
        e1 = branch.encode_half(x)
        e2 = branch.enc2(branch.down2(e1))
        e3 = branch.colour(branch.bottleneck(branch.down3(e2)))
        return 0.5 * (a + b) + branch.decode(e1, e2, e3)


def save_interframe_bundle(model: SuperResolution2x | FrameInterpolator2x, folder: Path,
                           facts: dict[str, Any]) -> Path:
    """Write an interframe model bundle (weights + ``config.json``)."""
    if isinstance(model, SuperResolution2x):
        doc = {"kind": "sr2", "architecture": {"width": model.width, "blocks": model.blocks}}
        return write_bundle(folder, model, SR_FILE, {**facts, **doc})
    doc = {"kind": "interp2", "architecture": {"width": model.width}}
    return write_bundle(folder, model, INTERP_FILE, {**facts, **doc})


def _build(config: dict[str, Any]) -> nn.Module:
    kind, arch = config["kind"], config["architecture"]
    if kind == "sr2":
        return SuperResolution2x(int(arch["width"]), int(arch["blocks"]))
    if kind == "interp2":
        return FrameInterpolator2x(int(arch["width"]))
    raise ValueError(f"unknown interframe model kind {kind!r}")


def load_interframe_bundle(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an interframe bundle in eval mode on ``device`` (see :func:`read_bundle`)."""
    model, config = read_bundle(folder, _build)
    return model.to(device).eval(), config


@torch.inference_mode()
def upscale_frame(model: SuperResolution2x, frame: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB → ``(2H, 2W, 3)`` uint8 RGB."""
    return to_uint8(model(to_tensor(frame, torch.device(device))))


def upscale_clip(model: SuperResolution2x, frames: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB → ``(T, 2H, 2W, 3)`` uint8 RGB, frame by frame."""
    out = np.empty((frames.shape[0], 2 * frames.shape[1], 2 * frames.shape[2], 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = upscale_frame(model, frame, device)
    return out


@torch.inference_mode()
def interpolate_pair(model: FrameInterpolator2x, first: np.ndarray, second: np.ndarray,
                     device: str | torch.device = "cpu", flow: DisFlow | None = None,
                     refine: bool = True) -> np.ndarray:
    """The frame halfway between ``first`` and ``second`` (``(H, W, 3)`` uint8 RGB each)
    as ``(H, W, 3)`` uint8 RGB; ``refine=False``: the flow-warped average only."""
    device = torch.device(device)
    flow = flow or DisFlow()
    h, w = first.shape[:2]
    a, _ = pad_to_multiple(to_tensor(first, device))
    b, _ = pad_to_multiple(to_tensor(second, device))
    fwd, _ = pad_to_multiple(flow_to_tensor(flow(first, second), device))
    bwd, _ = pad_to_multiple(flow_to_tensor(flow(second, first), device))
    return to_uint8(model(a, b, fwd, bwd, refine)[..., :h, :w])


def interpolate_clip(model: FrameInterpolator2x, frames: np.ndarray, device: str | torch.device = "cpu",
                     flow: DisFlow | None = None, refine: bool = True) -> np.ndarray:
    """Double the frame rate: ``(T, H, W, 3)`` → ``(2T - 1, H, W, 3)`` uint8 RGB, a new
    frame between each pair (the originals are kept); ``refine=False``: flow-warped
    averages only."""
    flow = flow or DisFlow()
    count = frames.shape[0]
    out = np.empty((2 * count - 1,) + frames.shape[1:], dtype=np.uint8)
    out[0::2] = frames
    for t in range(count - 1):
        out[2 * t + 1] = interpolate_pair(model, frames[t], frames[t + 1], device, flow, refine)
    return out
