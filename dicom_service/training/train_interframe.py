"""Training and measurement of the interframe models (x2 super-resolution, x2 interpolation).

Both learn from the *clean* frames (they run after restoration):

* super-resolution: random ``2c x 2c`` crops of clean frames, the input is the crop
  area-downscaled by 2, the target the crop;
* interpolation: frames ``t - 1`` and ``t + 1`` of a clean clip (DIS flows both ways,
  computed once) and the target frame ``t``; random crops of ``c x c``.

Loss: L1. Held-out figures compare with bicubic upscaling and with the flow-warped
average of the two neighbours (the interpolator without its refinement).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dicom_service.training.image_metrics import psnr
from dicom_service.training.optim import optimiser_step, warmup_cosine
from dicom_service.training.video_phantoms import VideoClip
from dicom_service.vision.interframe import FrameInterpolator2x, SuperResolution2x, interpolate_clip, upscale_clip
from dicom_service.vision.optical_flow import DisFlow

Log = Callable[[dict[str, Any]], None]


def _to_batch(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).float()


def _sr_batch(clips: Sequence[VideoClip], size: int, crop: int, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = [], []
    for _ in range(size):
        clip = clips[int(rng.integers(len(clips)))]
        frame = clip.clean[int(rng.integers(clip.clean.shape[0]))]
        h, w = frame.shape[:2]
        y, x = int(rng.integers(0, h - 2 * crop + 1)), int(rng.integers(0, w - 2 * crop + 1))
        target = frame[y:y + 2 * crop, x:x + 2 * crop]
        high.append(target)
        low.append(cv2.resize(target, (crop, crop), interpolation=cv2.INTER_AREA))
    return _to_batch(low) / 255.0, _to_batch(high) / 255.0


class TripletSampler:
    """Crops of ``(frame t-1, frame t+1, flows both ways, frame t)`` from clean clips."""

    def __init__(self, clips: Sequence[VideoClip], crop: int, seed: int) -> None:
        self.clips = [c for c in clips if c.clean.shape[0] >= 3 and min(c.clean.shape[1:3]) >= crop]
        if not self.clips:
            raise ValueError(f"no clip has >= 3 frames of at least {crop}x{crop} pixels")
        self.crop, self.rng = crop, np.random.default_rng(seed)
        dis = DisFlow()
        self.flows = [[(dis(c.clean[t - 1], c.clean[t + 1]), dis(c.clean[t + 1], c.clean[t - 1]))
                       for t in range(1, c.clean.shape[0] - 1)] for c in self.clips]

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """``first``, ``second``, ``target`` ``(N, 3, c, c)`` in [0, 1]; ``forward``, ``backward`` ``(N, 2, c, c)``."""
        items: dict[str, list[np.ndarray]] = {k: [] for k in ("first", "second", "target", "forward", "backward")}
        c = self.crop
        for _ in range(size):
            k = int(self.rng.integers(len(self.clips)))
            clip = self.clips[k]
            t = int(self.rng.integers(1, clip.clean.shape[0] - 1))
            h, w = clip.clean.shape[1:3]
            y, x = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
            window = (slice(y, y + c), slice(x, x + c))
            forward, backward = self.flows[k][t - 1]
            for key, value in (("first", clip.clean[t - 1]), ("second", clip.clean[t + 1]),
                               ("target", clip.clean[t]), ("forward", forward), ("backward", backward)):
                items[key].append(np.ascontiguousarray(value[window]))
        out = {k: _to_batch(v) for k, v in items.items()}
        for key in ("first", "second", "target"):
            out[key] = out[key] / 255.0
        return out


def _optimise(model: torch.nn.Module, steps: int, lr: float, loss_of: Callable[[], torch.Tensor],
              log: Log | None, stage: str) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = warmup_cosine(optimiser, steps, min(100, steps // 10))
    started, running = time.perf_counter(), []
    for step in range(steps):
        loss = loss_of()
        optimiser_step(loss, optimiser, scheduler)
        running.append(loss.detach().item())
        if log is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            log({"stage": stage, "step": step + 1, "loss": float(np.mean(running)),
                 "seconds": round(time.perf_counter() - started, 1)})
            running = []


def train_super_resolution(clips: Sequence[VideoClip], *, steps: int, batch_size: int = 8, crop: int = 48,
                           lr: float = 1e-3, width: int = 32, blocks: int = 4, seed: int = 0,
                           device: str = "cpu", log: Log | None = None) -> SuperResolution2x:
    """Train :class:`SuperResolution2x` (input crops ``crop``, targets ``2 crop``)."""
    usable = [c for c in clips if min(c.clean.shape[1:3]) >= 2 * crop]
    if not usable:
        raise ValueError(f"no clip has frames of at least {2 * crop}x{2 * crop} pixels")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SuperResolution2x(width, blocks).to(device).train()

    def loss_of() -> torch.Tensor:
        low, high = (v.to(device) for v in _sr_batch(usable, batch_size, crop, rng))
        return F.l1_loss(model(low), high)

    _optimise(model, steps, lr, loss_of, log, "sr2")
    return model.eval()


def train_interpolator(clips: Sequence[VideoClip], *, steps: int, batch_size: int = 8, crop: int = 96,
                       lr: float = 1e-3, width: int = 16, seed: int = 0, device: str = "cpu",
                       log: Log | None = None) -> FrameInterpolator2x:
    """Train :class:`FrameInterpolator2x` on clean frame triplets."""
    torch.manual_seed(seed)
    sampler = TripletSampler(clips, crop, seed)
    model = FrameInterpolator2x(width).to(device).train()

    def loss_of() -> torch.Tensor:
        b = {k: v.to(device) for k, v in sampler.batch(batch_size).items()}
        return F.l1_loss(model(b["first"], b["second"], b["forward"], b["backward"]), b["target"])

    _optimise(model, steps, lr, loss_of, log, "interp2")
    return model.eval()


def evaluate_interframe(sr: SuperResolution2x | None, interpolator: FrameInterpolator2x | None,
                        clips: Sequence[VideoClip], device: str = "cpu") -> dict[str, Any]:
    """Held-out PSNR (dB, mean over clips) of the models and of their classical baselines.

    ``sr2``: clean frames area-downscaled by 2 and brought back, model vs bicubic.
    ``interp2``: the odd frames rebuilt from the even ones, model vs the flow-warped
    average (the model's own warping without refinement) vs the plain average.
    """
    report: dict[str, Any] = {}
    if sr is not None:
        model_db, bicubic_db = [], []
        for clip in clips:
            h, w = (clip.clean.shape[1] // 2) * 2, (clip.clean.shape[2] // 2) * 2
            target = clip.clean[:, :h, :w]
            low = np.stack([cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for f in target])
            model_db.append(psnr(upscale_clip(sr, low, device), target))
            bicubic_db.append(psnr(np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in low]),
                                   target))
        report["sr2"] = {"psnr_model": float(np.mean(model_db)), "psnr_bicubic": float(np.mean(bicubic_db))}
    if interpolator is not None:
        model_db, warped_db, average_db = [], [], []
        for clip in clips:
            ends = clip.clean[0::2]
            count = ends.shape[0]
            truth = clip.clean[1:2 * count - 1:2]
            if truth.shape[0] == 0:
                continue
            model_db.append(psnr(interpolate_clip(interpolator, ends, device)[1::2], truth))
            warped_db.append(psnr(interpolate_clip(interpolator, ends, device, refine=False)[1::2], truth))
            mean = ((ends[:-1].astype(np.float32) + ends[1:]) / 2).round().astype(np.uint8)
            average_db.append(psnr(mean, truth))
        report["interp2"] = {"psnr_model": float(np.mean(model_db)), "psnr_flow_warped_average":
                             float(np.mean(warped_db)), "psnr_frame_average": float(np.mean(average_db))}
    return report
