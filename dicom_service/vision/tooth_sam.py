"""Segment Anything models for interactive tooth segmentation (seed 000): builders and bundles.

As in ``segment_anything/build_sam.py``, a registry maps a name to hyper-parameters and a
builder turns them into the package's own :class:`segment_anything.modeling.Sam`; the
model classes hold layers only. Names:

``tiny``
    Ours, sized for two CPU cores (256-pixel input, 1.85 M parameters, 7.4 MB in float32). Trained in this
    repository on synthetic intraoral phantoms, saved as a safetensors bundle.
``vit_b``, ``vit_l``, ``vit_h``
    The official architectures, with exactly the hyper-parameters of ``build_sam.py``, so
    that users who have Meta's ``sam_vit_*.pth`` checkpoints can load them
    (:func:`build_tooth_sam` with ``checkpoint=``).

Images given to a ``Sam`` are RGB in 0-255 (``pixel_mean`` / ``pixel_std`` are ImageNet
statistics times 255), resized so that the longest side is ``img_size`` and zero-padded to
``img_size × img_size`` by ``Sam.preprocess``. Low-resolution mask logits are
``(4 * img_size / patch_size)`` pixels per side.

Weights never load through pickle: ``.pth`` / ``.pt`` with
``torch.load(..., weights_only=True)``, or ``.safetensors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from dicom_service.vision.safetensors_io import read_bundle, write_bundle

SAM_BUNDLE_FORMAT = 1
SAM_WEIGHTS_FILE = "sam.safetensors"
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a :class:`~segment_anything.modeling.Sam` (names as in ``build_sam.py``)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid, ``img_size // patch_size``."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (and of ``mask_input``), ``4 * embedding_size``."""
        return 4 * self.embedding_size

    def validate(self) -> None:
        """Raise ``ValueError`` when the hyper-parameters cannot build a model."""
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"encoder_num_heads {self.encoder_num_heads}")
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise ValueError(f"encoder_global_attn_indexes {self.encoder_global_attn_indexes} must lie in "
                             f"[0, {self.encoder_depth})")
        if self.prompt_embed_dim % 8 or self.prompt_embed_dim % self.decoder_num_heads:
            raise ValueError(f"prompt_embed_dim {self.prompt_embed_dim} must be a multiple of 8 and of "
                             f"decoder_num_heads {self.decoder_num_heads}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SamConfig:
        """Inverse of :func:`dataclasses.asdict` (JSON turns the tuple into a list)."""
        try:
            fields = dict(doc)
            fields["encoder_global_attn_indexes"] = tuple(int(i) for i in fields["encoder_global_attn_indexes"])
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad SAM config {dict(doc)}: {exc}") from exc


_OFFICIAL = dict(img_size=1024, patch_size=16, window_size=14, prompt_embed_dim=256)

#: Named architectures. The ``vit_*`` entries are those of ``segment_anything/build_sam.py``.
SAM_CONFIGS: dict[str, SamConfig] = {
    "tiny": SamConfig(encoder_embed_dim=128, encoder_depth=4, encoder_num_heads=4,
                      encoder_global_attn_indexes=(1, 3), img_size=256, patch_size=16, window_size=8,
                      prompt_embed_dim=128, decoder_depth=2, decoder_mlp_dim=512, decoder_num_heads=8,
                      iou_head_hidden_dim=128),
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11), **_OFFICIAL),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23), **_OFFICIAL),
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31), **_OFFICIAL),
}


def sam_config(name: str) -> SamConfig:
    """The registered :class:`SamConfig` called ``name``; ``ValueError`` for unknown names."""
    if name not in SAM_CONFIGS:
        raise ValueError(f"unknown SAM config {name!r}; known: {sorted(SAM_CONFIGS)}")
    return SAM_CONFIGS[name]


def build_sam_from_config(cfg: SamConfig) -> Sam:
    """A randomly initialised ``Sam`` with the hyper-parameters ``cfg``, in eval mode on the CPU."""
    cfg.validate()
    grid = cfg.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.img_size,
            mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` (any case) or from a ``.pth`` / ``.pt`` without pickle.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is a folder, a corrupt or truncated file, or not a flat mapping of names
        to tensors (for example a pickled training checkpoint that ``weights_only=True``
        refuses); the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAM checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"SAM checkpoint {path} is a folder, not a weight file")
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a valid safetensors file (corrupt or truncated: {exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        # torch's own message suggests weights_only=False (never here: no pickle runs) and carries ANSI codes
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({type(exc).__name__}): a state dict of "
                         "tensors saved with torch.save, or a .safetensors file, is needed; pickled objects are "
                         "never loaded") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors, got {type(state).__name__}")
    return dict(state)


def load_sam_weights(model: Sam, state: Mapping[str, torch.Tensor], source: str) -> Sam:
    """Load ``state`` into ``model`` strictly; ``ValueError`` naming missing / unexpected keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not fit the architecture: "
                         f"{len(missing)} missing keys {missing[:8]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:8]}")
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"{source}: {len(wrong)} tensors have the wrong shape: {wrong[:8]}")
    model.load_state_dict(state, strict=True)
    return model


def build_tooth_sam(name: str, checkpoint: str | Path | None = None) -> Sam:
    """Build the registered SAM ``name``, optionally loading a checkpoint, in eval mode on the CPU.

    Parameters
    ----------
    name : str
        A key of :data:`SAM_CONFIGS` (``tiny``, ``vit_b``, ``vit_l``, ``vit_h``).
    checkpoint : path, optional
        An official ``sam_vit_*.pth`` state dict (read with ``weights_only=True``) or a
        ``.safetensors`` file; loaded with ``strict=True``.

    Raises
    ------
    ValueError
        Unknown name, or a checkpoint whose keys or shapes do not fit the architecture.
    FileNotFoundError
        ``checkpoint`` does not exist.
    """
    model = build_sam_from_config(sam_config(name))
    if checkpoint is not None:
        load_sam_weights(model, read_state_dict(checkpoint), str(checkpoint))
    return model


def config_of(model: Sam) -> SamConfig:
    """Recover the :class:`SamConfig` of a model built by :func:`build_sam_from_config`."""
    enc, dec = model.image_encoder, model.mask_decoder
    first = enc.blocks[0]
    return SamConfig(
        encoder_embed_dim=int(enc.patch_embed.proj.out_channels),
        encoder_depth=len(enc.blocks),
        encoder_num_heads=int(first.attn.num_heads),
        encoder_global_attn_indexes=tuple(i for i, b in enumerate(enc.blocks) if b.window_size == 0),
        img_size=int(enc.img_size),
        patch_size=int(enc.patch_embed.proj.kernel_size[0]),
        window_size=max(int(b.window_size) for b in enc.blocks),
        mlp_ratio=first.mlp.lin1.out_features / first.mlp.lin1.in_features,
        prompt_embed_dim=int(dec.transformer_dim),
        mask_in_chans=int(model.prompt_encoder.mask_downscaling[-1].in_channels),
        decoder_depth=len(dec.transformer.layers),
        decoder_mlp_dim=int(dec.transformer.layers[0].mlp.lin1.out_features),
        decoder_num_heads=int(dec.transformer.layers[0].self_attn.num_heads),
        num_multimask_outputs=int(dec.num_multimask_outputs),
        iou_head_depth=int(dec.iou_prediction_head.num_layers),
        iou_head_hidden_dim=int(dec.iou_prediction_head.layers[0].out_features),
    )


def save_sam_bundle(model: Sam, name: str, folder: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``folder/sam.safetensors`` and ``folder/config.json``; return the config path.

    ``config.json`` holds ``name``, the hyper-parameters (``sam``, read back from the model
    itself), the weight file with its ``sha256`` and the caller's ``metadata`` (training
    command, steps, data set, metrics, ...).
    """
    doc = {"bundle_format": SAM_BUNDLE_FORMAT, "name": name, "sam": asdict(config_of(model)),
           "metadata": dict(metadata)}
    return write_bundle(Path(folder), model, SAM_WEIGHTS_FILE, doc)


def load_sam_bundle(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Sam, dict[str, Any]]:
    """Rebuild the ``Sam`` of a bundle, in eval mode on ``device``, and return it with its config.

    Raises
    ------
    FileNotFoundError
        ``config.json`` or the weight file is missing.
    ValueError
        The config lacks a key, the weights' sha256 differs from the config, or the weights
        do not fit the configured architecture.
    """
    model, config = read_bundle(Path(folder), lambda doc: build_sam_from_config(SamConfig.from_dict(doc["sam"])))
    return model.to(torch.device(device)).eval(), config  # type: ignore[return-value]
