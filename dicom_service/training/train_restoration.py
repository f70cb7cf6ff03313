"""Training of the intraframe restoration model on paired clips (degraded → clean).

Each step draws random crops of consecutive frame pairs ``(t - 1, t)`` from the training
clips: the degraded current and previous frames, the DIS flow current → previous
computed on the *degraded* frames (as at inference), the tooth mask (ground truth,
randomly eroded or dilated by up to 3 px so that the model tolerates imperfect automatic
masks) and the clean current frame. For a bidirectional model the samples are triplets
``(t - 1, t, t + 1)`` with the flow current → next as well, and ``t`` also falls on a
clip's first and last frames, where the missing neighbour is the current frame with a
zero flow (what the network computes when the neighbour is absent). With ``mask_dropout``
a share of the samples get empty masks (all frames of the sample), so that a model with
the prior learns to restore a frame whose teeth the segmenter missed as well as a model
without it. Loss: Smooth L1 (beta 0.01) on the restored frame
plus half the Smooth L1 of the region branch inside the tooth mask (seed 000), plus
optionally ``ssim_weight`` × (1 − SSIM) of the restored frame (:func:`ssim_torch`, the
measure ``eval video`` reports; an addition to the seed's loss, off by default).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dicom_service.training.image_metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, psnr
from dicom_service.training.optim import optimiser_step, warmup_cosine
from dicom_service.training.video_phantoms import VideoClip
from dicom_service.vision.optical_flow import DisFlow, clip_flows
from dicom_service.vision.restoration_model import restore_clip
from dicom_service.vision.restoration_net import SIZE_MULTIPLE, PriorRestorationNet, RestorationConfig

log = logging.getLogger(__name__)
SMOOTH_L1_BETA = 0.01


@dataclass(frozen=True)
class RestorationTrainOptions:
    """Hyper-parameters of :func:`train_restoration`."""

    steps: int = 3000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    region_weight: float = 0.5
    ssim_weight: float = 0.0
    mask_dropout: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.crop < SIZE_MULTIPLE or self.crop % SIZE_MULTIPLE:
            raise ValueError(f"crop must be a positive multiple of {SIZE_MULTIPLE}, got {self.crop}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0, weight decay and warm-up steps >= 0")
        if self.ssim_weight < 0:
            raise ValueError(f"the SSIM weight must be >= 0, got {self.ssim_weight}")
        if not 0 <= self.mask_dropout < 1:
            raise ValueError(f"the mask dropout must be in [0, 1), got {self.mask_dropout}")


class PairSampler:
    """Random crops of consecutive frame pairs from a list of clips.

    Parameters
    ----------
    clips : sequence of VideoClip
        Each with ``T >= 2`` frames of at least ``crop x crop`` pixels.
    crop : int
        Crop side (multiple of 16).
    seed : int
    bidirectional : bool
        Triplets with the next frame (see the module docstring).
    mask_dropout : float
        Probability that a sample's masks are all empty (a missed segmentation).
    """

    def __init__(self, clips: Sequence[VideoClip], crop: int, seed: int, bidirectional: bool = False,
                 mask_dropout: float = 0.0) -> None:
        if crop % SIZE_MULTIPLE:
            raise ValueError(f"crop must be a multiple of {SIZE_MULTIPLE}, got {crop}")
        usable = [c for c in clips if c.clean.shape[0] >= 2 and min(c.clean.shape[1:3]) >= crop]
        if not usable:
            raise ValueError(f"no clip has >= 2 frames of at least {crop}x{crop} pixels")
        self.clips = usable
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.bidirectional = bidirectional
        self.mask_dropout = mask_dropout
        dis = DisFlow()
        self.flows = [clip_flows(c.degraded, dis) for c in usable]
        self.next_flows = [clip_flows(c.degraded, dis, step=1) for c in usable] if bidirectional else []

    def _mask(self, mask: np.ndarray, change: int | None) -> np.ndarray:
        if change is None:  # dropped: the segmenter found no tooth
            return np.zeros(mask.shape, np.float32)
        m = mask.astype(np.uint8)
        if change > 0:
            m = cv2.dilate(m, np.ones((3, 3), np.uint8), iterations=change)
        elif change < 0:
            m = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=-change)
        return m.astype(np.float32)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """A batch: ``image``, ``previous``, ``clean`` ``(N, 3, c, c)``; ``mask``,
        ``previous_mask`` ``(N, 1, c, c)``; ``flow`` ``(N, 2, c, c)`` (current → previous);
        bidirectional: also ``next`` ``(N, 3, c, c)``, ``next_mask`` ``(N, 1, c, c)`` and
        ``next_flow`` ``(N, 2, c, c)`` (current → next)."""
        items: dict[str, list[np.ndarray]] = {}
        c = self.crop
        for _ in range(size):
            k = int(self.rng.integers(len(self.clips)))
            clip = self.clips[k]
            count = clip.clean.shape[0]
            t = int(self.rng.integers(0, count)) if self.bidirectional else int(self.rng.integers(1, count))
            h, w = clip.clean.shape[1:3]
            y, x = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
            change: int | None = int(self.rng.integers(-3, 4))
            if self.mask_dropout and self.rng.random() < self.mask_dropout:
                change = None
            window = (slice(y, y + c), slice(x, x + c))
            sample = {"image": clip.degraded[t][window], "clean": clip.clean[t][window],
                      "mask": self._mask(clip.masks[t], change)[window][..., None]}
            flows: dict[str, np.ndarray] = {}
            neighbours = [("previous", "flow", -1, self.flows[k])]
            if self.bidirectional:
                neighbours.append(("next", "next_flow", 1, self.next_flows[k]))
            for name, flow_key, step, clip_flow in neighbours:
                inside = 0 <= t + step < count
                source = t + step if inside else t  # a missing neighbour: the frame itself, zero flow
                sample[name] = clip.degraded[source][window]
                sample[f"{name}_mask"] = self._mask(clip.masks[source], change)[window][..., None]
                flow = clip_flow[t] if inside else None
                flows[flow_key] = flow[window].copy() if flow is not None else np.zeros((c, c, 2), np.float32)
            if self.rng.random() < 0.5:  # horizontal flip: x components of the flow change sign
                sample = {key: v[:, ::-1] for key, v in sample.items()}
                flows = {key: v[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32) for key, v in flows.items()}
            for key, value in {**sample, **flows}.items():
                items.setdefault(key, []).append(np.ascontiguousarray(value))
        out = {}
        for key, values in items.items():
            array = torch.from_numpy(np.stack(values)).permute(0, 3, 1, 2).float()
            out[key] = array / 255.0 if key in ("image", "previous", "next", "clean") else array
        return out


def _masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.smooth_l1_loss(pred, target, beta=SMOOTH_L1_BETA, reduction="none") * mask
    return loss.sum() / (3 * mask.sum()).clamp(min=1.0)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable mean SSIM of two ``(N, C, H, W)`` images in ``[0, 1]``.

    The definition of :func:`~dicom_service.training.image_metrics.ssim` (11x11 Gaussian
    window, sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, mean over pixels and channels),
    with reflected borders; H and W must be at least 6.
    """
    channels, half = a.shape[1], SSIM_WINDOW // 2
    window = _gaussian_window().to(a)[None, None].expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (half, half, half, half), mode="reflect"), window, groups=channels)

    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return value.mean()


def restoration_loss(model: PriorRestorationNet, batch: dict[str, torch.Tensor], region_weight: float,
                     ssim_weight: float = 0.0) -> torch.Tensor:
    """Smooth L1 of the restored frame plus ``region_weight`` × masked Smooth L1 of the
    region branch (when the model has one) plus ``ssim_weight`` × (1 − SSIM) of the frame."""
    use_prior = model.config.use_prior
    previous = following = None
    if model.config.use_motion:
        previous = model.frame_features(batch["previous"], batch["previous_mask"] if use_prior else None)
    if model.config.bidirectional:
        following = model.frame_features(batch["next"], batch["next_mask"] if use_prior else None)
    restored, region, _ = model(batch["image"], batch["mask"] if use_prior else None, previous, batch["flow"],
                                following, batch.get("next_flow"))
    loss = F.smooth_l1_loss(restored, batch["clean"], beta=SMOOTH_L1_BETA)
    if region is not None:
        loss = loss + region_weight * _masked_smooth_l1(region, batch["clean"], batch["mask"])
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim_torch(restored, batch["clean"]))
    return loss


def train_restoration(config: RestorationConfig, train: Sequence[VideoClip], opts: RestorationTrainOptions,
                      device: str = "cpu", log_fn: Callable[[dict[str, Any]], None] | None = None,
                      initial: PriorRestorationNet | None = None) -> PriorRestorationNet:
    """Train a :class:`PriorRestorationNet`, from scratch or on from ``initial``.

    Parameters
    ----------
    config : RestorationConfig
    train : sequence of VideoClip
        Paired clips (``degraded``, ``clean``, ``masks``).
    opts : RestorationTrainOptions
    device : str
    log_fn : callable or None
        Receives ``{"step", "loss", "lr", "seconds"}`` every 50 steps.
    initial : PriorRestorationNet, optional
        A trained model to continue from (its architecture must equal ``config``, grown
        with :func:`~dicom_service.vision.restoration_net.grow` if needed);
        training then runs ``opts.steps`` more steps with a fresh warm-up and cosine.
    """
    opts.validate()
    if initial is not None and initial.config != config:
        raise ValueError(f"cannot continue a {initial.config} model as {config}")
    torch.manual_seed(opts.seed)
    sampler = PairSampler(train, opts.crop, opts.seed, bidirectional=config.bidirectional,
                          mask_dropout=opts.mask_dropout)
    model = (initial if initial is not None else PriorRestorationNet(config)).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = warmup_cosine(optimiser, opts.steps, opts.warmup_steps)
    started, running = time.perf_counter(), []
    for step in range(opts.steps):
        batch = {k: v.to(device) for k, v in sampler.batch(opts.batch_size).items()}
        loss = restoration_loss(model, batch, opts.region_weight, opts.ssim_weight)
        optimiser_step(loss, optimiser, scheduler, (model, 1.0))
        running.append(loss.detach().item())
        if log_fn is not None and ((step + 1) % 50 == 0 or step + 1 == opts.steps):
            log_fn({"step": step + 1, "loss": float(np.mean(running)), "lr": scheduler.get_last_lr()[0],
                    "seconds": round(time.perf_counter() - started, 1)})
            running = []
    return model.eval()


def mean_psnr(model: PriorRestorationNet, clips: Sequence[VideoClip], device: str = "cpu") -> float:
    """Mean per-clip PSNR of the model on clips, with ground-truth masks and DIS flows."""
    dis = DisFlow()
    values = []
    for clip in clips:
        following = clip_flows(clip.degraded, dis, step=1) if model.config.bidirectional else None
        restored = restore_clip(model, clip.degraded, clip.masks, clip_flows(clip.degraded, dis), device,
                                next_flows=following)
        values.append(psnr(restored, clip.clean))
    return float(np.mean(values))
