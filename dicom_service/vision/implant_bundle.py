"""The safetensors bundle of seed 002's implant models: detector, identifier, config.

A bundle is a folder with ``detector.safetensors``, ``identifier.safetensors`` and
``config.json``. The config holds the architecture (ViT, detector heads, identifier
width), the label spaces (part classes, systems, attribute values), the fitted
temperature, the sha256 of each weight file and the facts of the training run (command,
data set, metrics). Nothing is pickled: weights load with safetensors on any device.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.detection import MaskRCNN

from dicom_service.vision.implant_identifier import ImplantIdentifier
from dicom_service.vision.part_detector import PART_CLASSES, DetectorConfig, build_part_detector
from dicom_service.vision.vit import ViTConfig, ViTEncoder

BUNDLE_FORMAT = 2
DETECTOR_FILE, IDENTIFIER_FILE, CONFIG_FILE = "detector.safetensors", "identifier.safetensors", "config.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_bundle(out_dir: str | Path, detector: MaskRCNN, identifier: ImplantIdentifier,
                config: Mapping[str, Any]) -> Path:
    """Write the two models as safetensors plus ``config.json``; return the config path.

    ``config`` holds the caller's facts (``init``, ``mask_ratio``, ``command``,
    ``dataset``, ``seed``, metrics, ...). The architecture (``vit``, ``detector``,
    ``identifier``), ``systems``, ``attributes``, ``part_classes``, ``temperature`` and
    the ``weights`` file names with their ``sha256`` are taken from the models and
    override keys of the same name.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    encoder: ViTEncoder = detector.backbone.encoder
    weights = {}
    for name, module, file in (("detector", detector, DETECTOR_FILE), ("identifier", identifier, IDENTIFIER_FILE)):
        # one metadata key only: safetensors writes a multi-key metadata map in random order
        save_file(_state(module), str(root / file), metadata={"format": "pt"})
        weights[name] = {"file": file, "sha256": _sha256(root / file)}
    doc = dict(config)
    doc.update({
        "bundle_format": BUNDLE_FORMAT,
        "vit": asdict(encoder.config),
        "detector": asdict(detector.part_config),
        "identifier": {"width": int(identifier.trunk[0][0].out_channels)},
        "part_classes": list(PART_CLASSES),
        "systems": list(identifier.systems),
        "attributes": {k: list(v) for k, v in identifier.attributes.items()},
        "temperature": float(identifier.temperature),
        "weights": weights,
    })
    path = root / CONFIG_FILE
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_bundle(model_dir: str | Path, device: torch.device | str = "cpu"
                ) -> tuple[MaskRCNN, ImplantIdentifier, dict[str, Any]]:
    """Rebuild the detector and identifier of a bundle, in eval mode on ``device``.

    Raises
    ------
    FileNotFoundError
        ``config.json`` or a weight file is missing.
    ValueError
        A weight file's sha256 differs from the config, the config lacks a key, or the
        weights do not fit the architecture.
    """
    root = Path(model_dir)
    config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
    try:
        vit = ViTConfig(**config["vit"])
        det = DetectorConfig(**{**config["detector"], "mask_layers": tuple(config["detector"]["mask_layers"])})
        ident, weights = config["identifier"], config["weights"]
        systems, attributes = config["systems"], config["attributes"]
        if tuple(config["part_classes"]) != PART_CLASSES:
            raise ValueError(f"{root}: part classes {config['part_classes']} differ from {list(PART_CLASSES)}")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{root / CONFIG_FILE}: missing or bad key: {exc}") from exc
    states = {}
    for name in ("detector", "identifier"):
        path = root / weights[name]["file"]
        if _sha256(path) != weights[name]["sha256"]:
            raise ValueError(f"{path}: sha256 differs from {CONFIG_FILE}")
        states[name] = load_file(str(path), device="cpu")
    device = torch.device(device)
    detector = build_part_detector(ViTEncoder(vit), det)
    identifier = ImplantIdentifier(systems, attributes, width=int(ident["width"]))
    try:
        detector.load_state_dict(states["detector"], strict=True)
        identifier.load_state_dict(states["identifier"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{root}: weights do not fit the configured architecture: {exc}") from exc
    return detector.to(device).eval(), identifier.to(device).eval(), config
