"""Intraframe restoration with a tooth prior (seed 000) and motion alignment (seed 001).

The network (:class:`PriorRestorationNet`) has two branches of the same architecture
(:class:`RestorationBranch`) with independent weights:

* the *region* branch sees the frame multiplied by the tooth mask, plus the mask;
* the *frame* branch sees the whole frame, plus the mask.

At every encoder scale the region features are concatenated to the frame features and
mixed by a 1x1 convolution (IARS "fusion by channel concatenation"). Both branches
predict a residual on their input; the frame branch's output is the restored frame, the
region branch's output is supervised on the tooth region only (Smooth L1 in both).

Motion (MOST-NET+): the frame branch's half-resolution features of the *previous* frame
are warped onto the current frame with an optical flow (current → previous) and fused
with the current features by channel attention (squeeze-and-excitation weights over the
concatenated channels, then a 1x1 convolution). On the first frame of a clip the
previous features are the current ones. With ``bidirectional=True`` the *next* frame's
features are aligned the same way (flow current → next) and fused by a second
channel-attention module after the first: the handpiece shake makes the motion blur
change from frame to frame, so each neighbour may hold detail the current frame lost.
On the last frame the current features stand in. Its mixing convolution starts at zero,
so a model grown from one without it starts as the same function (:func:`grow`).

Without the prior (``use_prior=False``, the ablation of seed 000) the region branch is
absent and the mask channel is not an input.

With ``refine=True`` a small full-resolution stage (:class:`FullResolutionRefinement`)
follows the frame branch: the branches work at half resolution and end in a pixel
shuffle, which leaves pixel-level noise they cannot cancel; the refinement sees the
input (and mask) beside the restored frame at full resolution and adds a correction. Its
last convolution starts at zero, so a model grown from one without it starts as the same
function (:func:`grow`).

All tensors are ``(N, C, H, W)`` float32; images are RGB in ``[0, 1]``; masks ``(N, 1,
H, W)`` in ``[0, 1]``; flows ``(N, 2, H, W)`` in pixels, channel 0 = x (column), 1 = y.
H and W must be multiples of :data:`SIZE_MULTIPLE` (pad first, see :func:`pad_to_multiple`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

#: Input height and width must be multiples of this (three 2x downsamplings after the
#: 2x pixel unshuffle).
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class RestorationConfig:
    """Architecture of :class:`PriorRestorationNet`.

    Attributes
    ----------
    width : int
        Channels at half resolution; quarter and eighth resolution use 2x and 3x.
    blocks : int
        Residual blocks at the eighth-resolution bottleneck.
    use_prior : bool
        Region branch and mask input (the full model) or the frame branch alone.
    use_motion : bool
        Fuse the flow-aligned previous frame features.
    refine : bool
        Add the full-resolution refinement after the frame branch.
    bidirectional : bool
        Also fuse the flow-aligned next frame's features (needs ``use_motion``).
    """

    width: int = 32
    blocks: int = 2
    use_prior: bool = True
    use_motion: bool = True
    refine: bool = False
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.bidirectional and not self.use_motion:
            raise ValueError("a bidirectional restoration model needs use_motion")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1))


class ChannelAttentionFusion(nn.Module):
    """Concatenate two feature maps, weight channels (squeeze-excitation), mix 1x1.

    Parameters
    ----------
    channels : int
        Channels of each input; the output has the same number.
    zero_start : bool
        Start the mixing convolution at zero, so that the module starts as the identity
        on ``current`` (a module grown onto a trained model).
    """

    def __init__(self, channels: int, zero_start: bool = False) -> None:
        super().__init__()
        both = 2 * channels
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(both, both // 4, 1), nn.ReLU(),
                                       nn.Conv2d(both // 4, both, 1), nn.Sigmoid())
        self.mix = nn.Conv2d(both, channels, 1)
        if zero_start:
            nn.init.zeros_(self.mix.weight)
            nn.init.zeros_(self.mix.bias)

    def forward(self, current: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        both = torch.cat([current, aligned], dim=1)
        return current + self.mix(both * self.attention(both))


class _GlobalColour(nn.Module):
    """Per-channel scale and shift from pooled bottleneck features (colour cast, low light)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, 2 * channels))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(x.mean(dim=(2, 3))).chunk(2, dim=1)
        return x * (1 + scale[..., None, None]) + shift[..., None, None]


class RestorationBranch(nn.Module):
    """A small U-Net on a 2x pixel-unshuffled input that predicts an RGB residual.

    Scales: half (``w`` channels), quarter (``2w``), eighth (``3w``).

    Parameters
    ----------
    in_channels : int
        Input channels (RGB plus optional mask).
    width : int
    blocks : int
    """

    def __init__(self, in_channels: int, width: int, blocks: int) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 3 * width
        self.widths = (w1, w2, w3)
        self.stem = _conv(4 * in_channels, w1)
        self.enc1 = _ResBlock(w1)
        self.down2 = _conv(w1, w2, stride=2)
        self.enc2 = _ResBlock(w2)
        self.down3 = _conv(w2, w3, stride=2)
        self.bottleneck = nn.Sequential(*[_ResBlock(w3) for _ in range(blocks)])
        self.colour = _GlobalColour(w3)
        self.up2 = nn.Sequential(nn.Conv2d(w3, 4 * w2, 1), nn.PixelShuffle(2))
        self.dec2 = nn.Sequential(_conv(2 * w2, w2), _ResBlock(w2))
        self.up1 = nn.Sequential(nn.Conv2d(w2, 4 * w1, 1), nn.PixelShuffle(2))
        self.dec1 = nn.Sequential(_conv(2 * w1, w1), _ResBlock(w1))
        self.head = nn.Sequential(nn.Conv2d(w1, 12, 3, padding=1), nn.PixelShuffle(2))

    def encode_half(self, x: torch.Tensor) -> torch.Tensor:
        """Half-resolution features ``(N, w, H/2, W/2)`` of an input ``(N, C, H, W)``."""
        return self.enc1(self.stem(F.pixel_unshuffle(x, 2)))

    def decode(self, e1: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor) -> torch.Tensor:
        """Residual ``(N, 3, H, W)`` from the three encoder scales."""
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


class FullResolutionRefinement(nn.Module):
    """Three 3x3 convolutions at full resolution predicting a correction of a restored frame.

    Parameters
    ----------
    in_channels : int
        Channels of the network input (RGB plus optional mask); the restored RGB is
        concatenated to it.
    width : int
        Hidden channels.
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(in_channels + 3, width), _conv(width, width), nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(self.body[2].weight)
        nn.init.zeros_(self.body[2].bias)

    def forward(self, network_input: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` input and ``(N, 3, H, W)`` restored frame → corrected ``(N, 3, H, W)``."""
        return restored + self.body(torch.cat([network_input, restored], dim=1))


class PriorRestorationNet(nn.Module):
    """Dual-branch restoration with channel-concatenation fusion and motion alignment.

    Parameters
    ----------
    config : RestorationConfig
    """

    def __init__(self, config: RestorationConfig) -> None:
        super().__init__()
        self.config = config
        prior = 1 if config.use_prior else 0
        self.frame = RestorationBranch(3 + prior, config.width, config.blocks)
        w1, w2, w3 = self.frame.widths
        if config.use_prior:
            self.region = RestorationBranch(4, config.width, config.blocks)
            self.fuse1 = nn.Conv2d(2 * w1, w1, 1)
            self.fuse2 = nn.Conv2d(2 * w2, w2, 1)
            self.fuse3 = nn.Conv2d(2 * w3, w3, 1)
        if config.use_motion:
            self.motion = ChannelAttentionFusion(w1)
        if config.bidirectional:
            self.next_motion = ChannelAttentionFusion(w1, zero_start=True)
        if config.refine:
            self.refine = FullResolutionRefinement(3 + prior)

    def frame_features(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Half-resolution frame-branch features of one frame (cached for the next frame).

        Parameters
        ----------
        image : torch.Tensor
            ``(N, 3, H, W)`` RGB in ``[0, 1]``.
        mask : torch.Tensor or None
            ``(N, 1, H, W)`` tooth mask; required when the prior is used.
        """
        return self.frame.encode_half(self._frame_input(image, mask))

    def _frame_input(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.config.use_prior:
            return image
        if mask is None:
            raise ValueError("this restoration model uses the tooth prior: a mask is required")
        return torch.cat([image, mask], dim=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None,
                previous: torch.Tensor | None = None, flow: torch.Tensor | None = None,
                following: torch.Tensor | None = None, following_flow: torch.Tensor | None = None,
                features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Restore one frame.

        Parameters
        ----------
        image : torch.Tensor
            ``(N, 3, H, W)`` degraded RGB in ``[0, 1]``, H and W multiples of 16.
        mask : torch.Tensor or None
            ``(N, 1, H, W)`` tooth mask in ``[0, 1]`` (required with the prior).
        previous : torch.Tensor or None
            ``(N, w, H/2, W/2)`` :meth:`frame_features` of the previous frame; None on the
            first frame (the current features stand in).
        flow : torch.Tensor or None
            ``(N, 2, H, W)`` flow current → previous in pixels (x, y); None = zero.
        following : torch.Tensor or None
            ``(N, w, H/2, W/2)`` :meth:`frame_features` of the next frame (bidirectional
            models only; ignored otherwise); None on the last frame (the current features
            stand in).
        following_flow : torch.Tensor or None
            ``(N, 2, H, W)`` flow current → next in pixels (x, y); None = zero.
        features : torch.Tensor or None
            This frame's :meth:`frame_features` when already computed (as ``following``
            of the step before); None computes them.

        Returns
        -------
        restored : torch.Tensor
            ``(N, 3, H, W)`` restored RGB (not clamped).
        region : torch.Tensor or None
            ``(N, 3, H, W)`` region-branch restoration (meaningful inside the mask);
            None without the prior.
        features : torch.Tensor
            ``(N, w, H/2, W/2)`` this frame's features, to pass as ``previous`` next.
        """
        frame_in = self._frame_input(image, mask)
        branch = self.frame
        f1 = branch.encode_half(frame_in) if features is None else features
        features = f1
        if self.config.use_motion:
            aligned = f1 if previous is None else warp(previous, _half_flow(flow, f1))
            fused = self.motion(f1, aligned)
            if self.config.bidirectional:
                aligned = f1 if following is None else warp(following, _half_flow(following_flow, f1))
                fused = self.next_motion(fused, aligned)
            f1 = fused
        region_out = None
        if self.config.use_prior:
            reg, prior = self.region, frame_in[:, 3:4]
            r1 = reg.encode_half(torch.cat([image * prior, prior], dim=1))
            r2 = reg.enc2(reg.down2(r1))
            r3 = reg.colour(reg.bottleneck(reg.down3(r2)))
            region_out = image + reg.decode(r1, r2, r3)
            f1 = self.fuse1(torch.cat([f1, r1], dim=1))
            f2 = self.fuse2(torch.cat([branch.enc2(branch.down2(f1)), r2], dim=1))
            f3 = self.fuse3(torch.cat([branch.bottleneck(branch.down3(f2)), r3], dim=1))
        else:
            f2 = branch.enc2(branch.down2(f1))
            f3 = branch.bottleneck(branch.down3(f2))
        f3 = branch.colour(f3)
        restored = image + branch.decode(f1, f2, f3)
        if self.config.refine:
            restored = self.refine(frame_in, restored)
        return restored, region_out, features


#: Parameter-name prefixes of the parts :func:`grow` can add, by config field.
GROWABLE = {"refine": "refine.", "bidirectional": "next_motion."}


def grow(model: PriorRestorationNet, *, refine: bool = False, bidirectional: bool = False,
         prior: bool = False) -> PriorRestorationNet:
    """A copy of a trained model with parts added that start as the same function.

    ``refine`` adds the full-resolution refinement, ``bidirectional`` the next-frame
    fusion; both start at zero. ``prior`` turns a model without the tooth prior into
    one with it (:func:`_prior_state`): the mask input weights start at zero, the region
    branch starts as a copy of the frame branch and the fusion convolutions start as the
    identity on the frame features. In every case the copy computes the same function as
    ``model`` (for any mask) until it is trained further.

    Raises
    ------
    ValueError
        Nothing to add, or a part the model already has.
    """
    wanted = (("refine", refine), ("bidirectional", bidirectional), ("use_prior", prior))
    changes = {name: True for name, flag in wanted if flag}
    if not changes:
        raise ValueError("grow: name a part to add (refine, bidirectional, prior)")
    present = [name for name in changes if getattr(model.config, name)]
    if present:
        raise ValueError(f"the model already has {', '.join(present)}")
    grown = PriorRestorationNet(replace(model.config, **changes)).to(next(model.parameters()).device)
    state = _prior_state(model, grown) if prior else model.state_dict()
    missing, unexpected = grown.load_state_dict(state, strict=False)
    prefixes = tuple(GROWABLE[name] for name in changes if name in GROWABLE)
    if unexpected or any(not key.startswith(prefixes) for key in missing):
        raise ValueError(f"cannot grow {', '.join(changes)}: missing {missing}, unexpected {unexpected}")
    return grown.train(model.training)


def _prior_state(model: PriorRestorationNet, grown: PriorRestorationNet) -> dict[str, torch.Tensor]:
    """State of ``grown`` (with the prior) that computes what ``model`` (without) does.

    The pixel-unshuffled stem input of a 4-channel branch is ``[16 RGB+mask sub-pixels]``
    ordered channel-major, so its first 12 input channels are the 3-channel stem's; the
    mask's 4 start at zero. The refinement's input gains the mask between the frame and
    the restored RGB (zero weights). ``fuse*`` = ``[identity | zero]`` over
    ``[frame | region]`` channels.
    """
    source = model.state_dict()
    state = {key: value.clone() for key, value in source.items()}
    target = grown.state_dict()

    def widen(key: str, columns: list[int]) -> None:
        weight = torch.zeros_like(target[key])
        weight[:, columns] = source[key]
        state[key] = weight

    widen("frame.stem.0.weight", list(range(12)))
    if model.config.refine:
        widen("refine.body.0.0.weight", [0, 1, 2, 4, 5, 6])
    for key in source:
        if key.startswith("frame."):  # both branches take 4 channels: the widened stem fits the region's
            state["region." + key.removeprefix("frame.")] = state[key].clone()
    for name in ("fuse1", "fuse2", "fuse3"):
        weight = torch.zeros_like(target[f"{name}.weight"])
        channels = weight.shape[0]
        weight[:, :channels, 0, 0] = torch.eye(channels)
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, torch.zeros_like(target[f"{name}.bias"])
    return state


def _half_flow(flow: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor | None:
    """Flow at the features' (half) resolution, in half-resolution pixels."""
    if flow is None:
        return None
    return F.interpolate(flow, size=features.shape[-2:], mode="bilinear", align_corners=False) * 0.5


def warp(features: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
    """Backward-warp ``features`` with ``flow``: ``out(p) = features(p + flow(p))``.

    Parameters
    ----------
    features : torch.Tensor
        ``(N, C, H, W)``.
    flow : torch.Tensor or None
        ``(N, 2, H, W)`` in pixels of this resolution (x, y); None returns ``features``.
        Samples outside are taken from the border.
    """
    if flow is None:
        return features
    n, _, h, w = features.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = (xs[None] + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys[None] + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad ``(N, C, H, W)`` on the bottom/right to multiples of ``multiple``.

    Returns
    -------
    padded : torch.Tensor
    size : tuple of int
        The original ``(H, W)``, to crop the output back.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)
