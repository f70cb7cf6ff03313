"""Training and measurement of the interframe models (x2 super-resolution, x2 interpolation).

Both learn from the *clean* frames (they run after restoration):

* super-resolution: random ``2c x 2c`` crops of clean frames, the input is the crop
  area-downscaled by 2, the target the crop;
* interpolation: frames ``t - 1`` and ``t + 1`` of a clean clip stabilised as the
  runtimes stabilise it (DIS flows both ways, computed once) and the target frame ``t``;
  random crops of ``c x c``.

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
from dicom_service.vision.optical_flow import DisFlow, lands_inside
from dicom_service.vision.stabilisation import DEFAULT_SMOOTHING_SECONDS, estimate_motion, smoothing_radius, stabilise

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
    """Crops of ``(frame t-1, frame t+1, flows both ways, frame t)`` from clean clips.

    Parameters
    ----------
    stacks : sequence of np.ndarray
        ``(T, H, W, 3)`` uint8 RGB clean frames of each clip; those with fewer than 3
        frames or a side under ``crop`` are left out.
    crop : int
    seed : int
    """

    def __init__(self, stacks: Sequence[np.ndarray], crop: int, seed: int) -> None:
        self.stacks = [s for s in stacks if s.shape[0] >= 3 and min(s.shape[1:3]) >= crop]
        if not self.stacks:
            raise ValueError(f"no clip has >= 3 frames of at least {crop}x{crop} pixels")
        self.crop, self.rng = crop, np.random.default_rng(seed)
        dis = DisFlow()
        self.flows = [[(dis(s[t - 1], s[t + 1]), dis(s[t + 1], s[t - 1])) for t in range(1, s.shape[0] - 1)]
                      for s in self.stacks]

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """``first``, ``second``, ``target`` ``(N, 3, c, c)`` in [0, 1]; ``forward``, ``backward`` ``(N, 2, c, c)``."""
        items: dict[str, list[np.ndarray]] = {k: [] for k in ("first", "second", "target", "forward", "backward")}
        c = self.crop
        for _ in range(size):
            k = int(self.rng.integers(len(self.stacks)))
            frames = self.stacks[k]
            t = int(self.rng.integers(1, frames.shape[0] - 1))
            h, w = frames.shape[1:3]
            y, x = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
            window = (slice(y, y + c), slice(x, x + c))
            forward, backward = self.flows[k][t - 1]
            for key, value in (("first", frames[t - 1]), ("second", frames[t + 1]),
                               ("target", frames[t]), ("forward", forward), ("backward", backward)):
                items[key].append(np.ascontiguousarray(value[window]))
        out = {k: _to_batch(v) for k, v in items.items()}
        for key in ("first", "second", "target"):
            out[key] = out[key] / 255.0
        return out


def stabilised_clean(clip: VideoClip) -> np.ndarray:
    """``clip.clean`` stabilised as the video runtimes stabilise (motion estimated from the
    frames, path smoothed over :data:`~dicom_service.vision.stabilisation.DEFAULT_SMOOTHING_SECONDS`)."""
    radius = smoothing_radius(clip.fps, clip.clean.shape[0], DEFAULT_SMOOTHING_SECONDS)
    return stabilise(clip.clean, estimate_motion(clip.clean), radius)


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
    """Train :class:`FrameInterpolator2x` on triplets of the clean clips stabilised first
    (:func:`stabilised_clean`): the runtimes interpolate after stabilisation, and the
    middle frame of a shaking camera cannot be told from its neighbours."""
    torch.manual_seed(seed)
    sampler = TripletSampler([stabilised_clean(clip) for clip in clips], crop, seed)
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
    ``sr2_to_1_5``: clean frames area-downscaled by 1.5 and brought back as the runtime brings
    a 1280x720 video to 1920x1080 (the model's x2 result area-downscaled by 4/3) vs bicubic.
    ``interp2``: the odd frames rebuilt from the even ones, model vs the flow-warped
    average (the model's own warping without refinement) vs the plain average; under
    ``stabilised``, the same on the clips stabilised first (as the runtimes run it: the
    middle frame of a shaking camera cannot be told from its neighbours, see the model card).
    """
    report: dict[str, Any] = {}
    if sr is not None:
        report["sr2"] = _upscale_scores(sr, clips, device, 2, 1)
        report["sr2_to_1_5"] = _upscale_scores(sr, clips, device, 3, 2)
    if interpolator is not None:
        report["interp2"] = _interp_scores(interpolator, [clip.clean for clip in clips], device)
        report["interp2"]["stabilised"] = _interp_scores(interpolator, [stabilised_clean(c) for c in clips], device)
        errors = [linear_midpoint_error(clip) for clip in clips]
        known = [e for e in errors if e is not None]
        report["interp2"]["linear_midpoint_error_px"] = float(np.mean(known)) if known else None
    return report


def _upscale_scores(sr: SuperResolution2x, clips: Sequence[VideoClip], device: str,
                    size: int, low: int) -> dict[str, float]:
    """PSNR (dB, mean over clips) of upscaling by ``size / low`` (2 / 1 or 3 / 2): clean
    frames cropped to a multiple of ``size`` ``(h, w)``, area-downscaled to
    ``(low h / size, low w / size)`` and brought back by the model's x2 (area-downscaled to
    ``(h, w)`` where that is larger, as the runtime brings a 1280x720 video to 1920x1080)
    vs bicubic."""
    model_db, bicubic_db = [], []
    for clip in clips:
        h, w = (clip.clean.shape[1] // size) * size, (clip.clean.shape[2] // size) * size
        target = clip.clean[:, :h, :w]
        small = np.stack([cv2.resize(f, (low * w // size, low * h // size), interpolation=cv2.INTER_AREA)
                          for f in target])
        restored = upscale_clip(sr, small, device)
        if restored.shape != target.shape:
            restored = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in restored])
        model_db.append(psnr(restored, target))
        bicubic_db.append(psnr(np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in small]),
                               target))
    return {"psnr_model": float(np.mean(model_db)), "psnr_bicubic": float(np.mean(bicubic_db))}


def linear_midpoint_error(clip: VideoClip) -> float | None:
    """How far (px, mean) linear motion puts the middle frame's content from where it is.

    For frames ``t - 1``, ``t``, ``t + 1`` with true flows ``a`` (``t - 1 → t``) and ``b``
    (``t → t + 1``), a point of frame ``t - 1`` is at ``p + a(p)`` in frame ``t``; linear
    motion from ``t - 1`` to ``t + 1`` puts it at ``p + (a(p) + b(p + a(p))) / 2``. The
    error is the mean distance between the two over the points that stay in view, over
    all triplets: a floor for any interpolator that sees only frames ``t - 1`` and
    ``t + 1``. None without true flow or with fewer than 3 frames.
    """
    if clip.flow is None or clip.flow.shape[0] < 2:
        return None
    h, w = clip.flow.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    errors = []
    for a, b in zip(clip.flow[:-1], clip.flow[1:], strict=True):
        onward = cv2.remap(b, xs + a[..., 0], ys + a[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        valid = lands_inside(a)
        if valid.any():
            errors.append(float(np.linalg.norm((onward - a) / 2, axis=-1)[valid].mean()))
    return float(np.mean(errors)) if errors else None


def _interp_scores(interpolator: FrameInterpolator2x, clips: Sequence[np.ndarray], device: str) -> dict[str, Any]:
    """PSNR (dB, mean over clips) of the odd frames of each ``(T, H, W, 3)`` clip rebuilt
    from the even ones: the model, its flow-warped average, the plain average (None where no clip has 3 frames)."""
    model_db, warped_db, average_db = [], [], []
    for frames in clips:
        ends = frames[0::2]
        count = ends.shape[0]
        truth = frames[1:2 * count - 1:2]
        if truth.shape[0] == 0:
            continue
        model_db.append(psnr(interpolate_clip(interpolator, ends, device)[1::2], truth))
        warped_db.append(psnr(interpolate_clip(interpolator, ends, device, refine=False)[1::2], truth))
        mean = ((ends[:-1].astype(np.float32) + ends[1:]) / 2).round().astype(np.uint8)
        average_db.append(psnr(mean, truth))
    if not model_db:  # no clip of 3 frames or more: nothing to rebuild
        return {"psnr_model": None, "psnr_flow_warped_average": None, "psnr_frame_average": None}
    return {"psnr_model": float(np.mean(model_db)), "psnr_flow_warped_average": float(np.mean(warped_db)),
            "psnr_frame_average": float(np.mean(average_db))}
