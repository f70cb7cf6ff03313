"""Stage 2 identification: design attributes and implant system of one implant crop.

After stage-2 grouping gives an implant box, the box is cropped from the radiograph,
rotated upright by the caller if its axis is known, and resized to ``(192, 64)``
(rows, columns: implants are tall). A small CNN trunk feeds one classification head per
design attribute and one for the implant system. System probabilities are calibrated by
temperature scaling (:func:`fit_temperature`, bounded by :data:`TEMPERATURE_BOUNDS`) on
held-out data, and the top 3 are reported with their probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CROP_SHAPE: tuple[int, int] = (192, 64)


def crop_implant(image: np.ndarray, box: tuple[float, float, float, float], *,
                 coronal_on_top: bool = True, pad: float = 0.1) -> np.ndarray:
    """Cut an implant out of a radiograph as a model input.

    Parameters
    ----------
    image : np.ndarray
        ``(rows, cols)`` float in [0, 1].
    box : tuple of float
        ``(x0, y0, x1, y1)`` implant box in image pixels.
    coronal_on_top : bool
        False for an implant whose apex points up (maxilla): the crop is flipped
        vertically so that every crop has its platform at the top.
    pad : float
        Fraction of the box size added on each side.

    Returns
    -------
    np.ndarray
        ``CROP_SHAPE`` = ``(192, 64)`` float32, zero outside the image.
    """
    x0, y0, x1, y1 = box
    w, h = max(1.0, x1 - x0), max(1.0, y1 - y0)
    x0, x1 = int(np.floor(x0 - pad * w)), int(np.ceil(x1 + pad * w))
    y0, y1 = int(np.floor(y0 - pad * h)), int(np.ceil(y1 + pad * h))
    rows, cols = image.shape[:2]
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    sy0, sx0, sy1, sx1 = max(0, y0), max(0, x0), min(rows, y1), min(cols, x1)
    if sy1 > sy0 and sx1 > sx0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    crop = cv2.resize(canvas, (CROP_SHAPE[1], CROP_SHAPE[0]), interpolation=cv2.INTER_AREA)
    return crop if coronal_on_top else crop[::-1].copy()


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class ImplantIdentifier(nn.Module):
    """CNN with one head per design attribute and one for the system.

    Parameters
    ----------
    systems : sequence of str
        System names, in head order.
    attributes : mapping of str to sequence of str
        Attribute name → its possible values, in head order.
    width : int
        Channels of the first block (doubled per block, four blocks).
    """

    def __init__(self, systems: Sequence[str], attributes: Mapping[str, Sequence[str]], width: int = 24) -> None:
        super().__init__()
        if not systems:
            raise ValueError("at least one implant system is needed")
        self.systems = tuple(systems)
        self.attributes = {k: tuple(v) for k, v in attributes.items()}
        self.trunk = nn.Sequential(_conv(1, width), _conv(width, 2 * width), _conv(2 * width, 4 * width),
                                   _conv(4 * width, 8 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        features = 8 * width
        self.system_head = nn.Linear(features, len(self.systems))
        self.attribute_heads = nn.ModuleDict({k: nn.Linear(features, len(v)) for k, v in self.attributes.items()})
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B, 1, 192, 64)`` crops in [0, 1] → system logits ``(B, S)`` and attribute logits."""
        features = self.trunk(crops)
        return self.system_head(features), {k: head(features) for k, head in self.attribute_heads.items()}

    def loss(self, crops: torch.Tensor, system_targets: torch.Tensor,
             attribute_targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the system plus the mean over attribute heads.

        Targets are class indices; an attribute target of -1 means "not annotated".
        """
        system_logits, attribute_logits = self(crops)
        total = F.cross_entropy(system_logits, system_targets)
        losses = [F.cross_entropy(attribute_logits[k], t, ignore_index=-1)
                  for k, t in attribute_targets.items() if (t >= 0).any()]
        if losses:
            total = total + torch.stack(losses).mean()
        return total

    @torch.no_grad()
    def identify(self, crops: torch.Tensor, top: int = 3) -> list[dict]:
        """Calibrated top-``top`` systems and the most likely value of each attribute.

        Returns
        -------
        list of dict
            Per crop: ``{"systems": [(name, probability), ...], "attributes": {name: value}}``.
        """
        self.eval()
        system_logits, attribute_logits = self(crops)
        probabilities = F.softmax(system_logits / self.temperature, dim=1)
        values, indices = probabilities.topk(min(top, len(self.systems)), dim=1)
        out = []
        for i in range(crops.shape[0]):
            out.append({
                "systems": [(self.systems[j], float(p)) for p, j in zip(values[i], indices[i], strict=True)],
                "attributes": {k: self.attributes[k][int(v[i].argmax())] for k, v in attribute_logits.items()},
            })
        return out


TEMPERATURE_BOUNDS: tuple[float, float] = (0.25, 25.0)
"""Range of a fitted temperature. A held-out set the identifier gets entirely right has no
NLL minimum (the NLL falls as ``T`` → 0), so the bound decides there; below 0.25 logit
gaps of about 25 would already become probabilities that float32 rounds to 0."""


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS, steps: int = 80) -> float:
    """Temperature ``T`` in ``bounds`` minimising the NLL of ``softmax(logits / T)`` on held-out data.

    The NLL is convex in ``1 / T`` and so unimodal in ``log T``; a golden-section search on
    ``log T`` finds the minimum within ``bounds`` (to about ``1e-9`` relative after 80 steps).

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, C)`` uncalibrated logits.
    targets : torch.Tensor
        ``(N,)`` class indices.
    bounds : tuple of float
        ``(lowest, highest)`` temperature, ``0 < lowest <= highest``.

    Raises
    ------
    ValueError
        Empty data or bad bounds.
    """
    low, high = bounds
    if not 0 < low <= high:
        raise ValueError(f"temperature bounds must satisfy 0 < low <= high, got {bounds}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"need (N, C) logits and (N,) targets with N > 0, got {tuple(logits.shape)}")
    logits, targets = logits.detach().double(), targets.detach().long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), targets))

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    best = min((nll(math.log(low)), low), (nll(math.log(high)), high), (min(fc, fd), math.exp((a + b) / 2)))
    return float(best[1])
