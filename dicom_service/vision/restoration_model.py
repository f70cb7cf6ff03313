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
    count = frames.shape[0]
    use_next = model.config.bidirectional and next_flows is not None
    restorer = FrameRestorer(model, device, dtype)
    out = np.empty_like(frames)
    for t in range(count):
        mask = masks[t] if masks is not None else None
        upcoming = (frames[t + 1], masks[t + 1] if masks is not None else None) if t + 1 < count else None
        next_flow = next_flows[t] if use_next and upcoming is not None else None
        out[t] = restorer.restore(frames[t], mask, flows[t] if flows is not None and t > 0 else None,
                                  upcoming, next_flow)
        if on_frame is not None:
            on_frame(t)
    return out


class FrameRestorer:
    """Restores a clip one frame at a time, in order (what :func:`restore_clip` does for a
    whole clip, for clips streamed through the runtime).

    It carries the previous frame's features (motion branch) and, for a bidirectional
    model, computes the next frame's features one step ahead, so frame ``t`` can be
    restored as soon as frame ``t + 1`` has arrived.

    Parameters
    ----------
    model : PriorRestorationNet
    device : str or torch.device
    dtype : torch.dtype
        Compute precision.
    """

    def __init__(self, model: PriorRestorationNet, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.t = 0
        self._previous: torch.Tensor | None = None
        self._current_features: torch.Tensor | None = None
        self._upcoming: tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]] | None = None

    def _inputs(self, frame: np.ndarray, mask: np.ndarray | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        image, size = pad_to_multiple(to_tensor(frame, self.device))
        prior = None
        if self.model.config.use_prior:
            if mask is None or mask.shape != frame.shape[:2]:
                raise ValueError("this model uses the tooth prior: a mask (H, W) matching the frame is required")
            prior, _ = pad_to_multiple(torch.from_numpy(mask).to(self.device)[None, None].float())
        return image, prior, size

    def _flow(self, flow: np.ndarray | None) -> torch.Tensor | None:
        return None if flow is None else pad_to_multiple(flow_to_tensor(flow, self.device))[0]

    @torch.inference_mode()
    def restore(self, frame: np.ndarray, mask: np.ndarray | None, back_flow: np.ndarray | None,
                upcoming: tuple[np.ndarray, np.ndarray | None] | None = None,
                next_flow: np.ndarray | None = None) -> np.ndarray:
        """Restore the next frame of the clip.

        Parameters
        ----------
        frame : np.ndarray
            ``(H, W, 3)`` uint8 RGB, frame ``t`` (the frames of a clip share one size).
        mask : np.ndarray or None
            ``(H, W)`` bool tooth mask of frame ``t``; required when the model uses the prior.
        back_flow : np.ndarray or None
            ``(H, W, 2)`` float32 (x, y) flow frame ``t`` → ``t - 1``; None: no previous frame.
        upcoming : tuple or None
            Frame ``t + 1`` and its mask, None for the last frame. Frame ``t + 1`` is
            prepared once, here, and reused when it is restored.
        next_flow : np.ndarray or None
            Flow frame ``t`` → ``t + 1`` for a bidirectional model (None: the next frame is
            not used; ignored by other models).

        Returns
        -------
        np.ndarray
            ``(H, W, 3)`` uint8 RGB, frame ``t`` restored.
        """
        model, t = self.model, self.t
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            image, prior, size = self._upcoming if self._upcoming is not None else self._inputs(frame, mask)
            following = next_features = following_flow = None
            self._upcoming = None
            if upcoming is not None:
                self._upcoming = self._inputs(*upcoming)
                following_flow = self._flow(next_flow) if model.config.bidirectional else None
                if following_flow is not None:
                    next_features = model.frame_features(self._upcoming[0], self._upcoming[1])
                    following = next_features
            back = self._flow(back_flow) if t > 0 else None
            restored, _, features = model(image, prior, self._previous if t > 0 else None, back,
                                          following, following_flow, self._current_features)
            result = to_uint8(restored[..., :size[0], :size[1]].float())
        self._previous, self._current_features = features, next_features
        self.t += 1
        return result
