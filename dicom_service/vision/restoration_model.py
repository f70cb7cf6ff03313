"""The restoration bundle (safetensors + config.json) and clip-level inference.

A bundle is a folder with ``restoration.safetensors`` and ``config.json`` (the
:class:`~dicom_service.vision.restoration_net.RestorationConfig`, the sha256 of the
weights and the facts of the training run). :func:`restore_clip` runs a model over a
clip frame by frame, carrying the previous frame's features (motion branch) and, for a
bidirectional model, computing the next frame's features one step ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_service.vision.restoration_net import PriorRestorationNet, RestorationConfig, pad_to_multiple
from dicom_service.vision.safetensors_io import read_bundle, write_bundle

WEIGHTS_FILE = "restoration.safetensors"


def save_restoration_bundle(model: PriorRestorationNet, folder: Path, facts: Mapping[str, Any]) -> Path:
    """Write the weights and ``config.json`` (architecture + ``facts``); return the config path."""
    return write_bundle(folder, model, WEIGHTS_FILE, {**facts, "architecture": model.config.to_dict()})


def load_restoration_bundle(folder: Path, device: str | torch.device = "cpu"
                            ) -> tuple[PriorRestorationNet, dict[str, Any]]:
    """Rebuild a bundled model in eval mode on ``device``.

    Raises
    ------
    FileNotFoundError
        ``config.json`` or the weights are missing.
    ValueError
        Bad config, sha256 mismatch, or weights that do not fit the architecture.
    """
    model, config = read_bundle(folder, lambda doc: PriorRestorationNet(RestorationConfig(**doc["architecture"])))
    return model.to(device).eval(), config  # type: ignore[return-value]


def to_tensor(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB → ``(1, 3, H, W)`` float32 in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255.0


def flow_to_tensor(flow: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(H, W, 2)`` float flow (x, y) → ``(1, 2, H, W)`` float32."""
    return torch.from_numpy(np.ascontiguousarray(flow)).to(device).permute(2, 0, 1)[None].float()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` float in ``[0, 1]`` → ``(H, W, 3)`` uint8 RGB (rounded, clamped)."""
    return (image[0].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def restore_clip(model: PriorRestorationNet, frames: np.ndarray, masks: np.ndarray | None,
                 flows: Sequence[np.ndarray | None] | None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, on_frame: Callable[[int], None] | None = None,
                 next_flows: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """Restore a clip frame by frame.

    Parameters
    ----------
    model : PriorRestorationNet
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB degraded frames (any H, W >= 16: padded internally).
    masks : np.ndarray or None
        ``(T, H, W)`` bool tooth masks; required when the model uses the prior.
    flows : sequence or None
        ``T`` flows ``(H, W, 2)`` float32 from frame ``t`` to frame ``t - 1`` (x, y
        pixels); entry 0 and None entries mean "no previous frame". None = no motion.
    device : str or torch.device
    dtype : torch.dtype
        Compute precision (float16 on CUDA for speed).
    on_frame : callable or None
        Called with ``t`` after frame ``t`` is restored (progress; may raise to abort).
    next_flows : sequence or None
        For a bidirectional model: ``T`` flows from frame ``t`` to frame ``t + 1``
        (:func:`~dicom_service.vision.optical_flow.clip_flows` with ``step=1``); the last
        entry and None entries mean "no next frame". None = the next frame is not used.
        Ignored by other models.

    Returns
    -------
    np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if model.config.use_prior and (masks is None or masks.shape != frames.shape[:3]):
        raise ValueError("this model uses the tooth prior: masks (T, H, W) matching the frames are required")
    for name, given in (("flows", flows), ("next_flows", next_flows)):
        if given is not None and len(given) != frames.shape[0]:
            raise ValueError(f"{name} must have one entry per frame ({frames.shape[0]}), got {len(given)}")
    device = torch.device(device)
    count = frames.shape[0]
    use_next = model.config.bidirectional and next_flows is not None

    def inputs(t: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        image, size = pad_to_multiple(to_tensor(frames[t], device))
        mask = None
        if model.config.use_prior and masks is not None:
            mask, _ = pad_to_multiple(torch.from_numpy(masks[t]).to(device)[None, None].float())
        return image, mask, size

    def flow_at(given: Sequence[np.ndarray | None] | None, t: int) -> torch.Tensor | None:
        if given is None or given[t] is None:
            return None
        return pad_to_multiple(flow_to_tensor(given[t], device))[0]

    out = np.empty_like(frames)
    previous = current_features = None
    upcoming = inputs(0)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for t in range(count):
            image, mask, size = upcoming
            following = following_flow = next_features = None
            if t + 1 < count:
                upcoming = inputs(t + 1)
                following_flow = flow_at(next_flows, t) if use_next else None
                if following_flow is not None:
                    next_features = model.frame_features(upcoming[0], upcoming[1])
                    following = next_features
            back_flow = flow_at(flows, t) if t > 0 else None
            restored, _, features = model(image, mask, previous if t > 0 else None, back_flow,
                                          following, following_flow, current_features)
            previous, current_features = features, next_features
            out[t] = to_uint8(restored[..., :size[0], :size[1]].float())
            if on_frame is not None:
                on_frame(t)
    return out
