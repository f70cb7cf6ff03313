"""The safetensors bundle of seed 002's implant models: detector, identifier, config.

A bundle is a folder with ``detector.safetensors``, ``identifier.safetensors`` and
``config.json``. The config holds the architecture (ViT, detector heads, identifier
width), the label spaces (part classes, systems, attribute values), the fitted
temperature, the sha256 of each weight file and the facts of the training run (command,
data set, metrics). Nothing is pickled: weights load with safetensors on any device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN

from dicom_service.vision.implant_identifier import ImplantIdentifier
from dicom_service.vision.part_detector import PART_CLASSES, DetectorConfig, build_part_detector
from dicom_service.vision.safetensors_io import load_checked, load_into, save_module
from dicom_service.vision.vit import ViTConfig, ViTEncoder

BUNDLE_FORMAT = 2
DETECTOR_FILE, IDENTIFIER_FILE, CONFIG_FILE = "detector.safetensors", "identifier.safetensors", "config.json"


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
        weights[name] = {"file": file, "sha256": save_module(module, root / file)}
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
    return write_config(root, doc)


def write_config(model_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """(Re)write a bundle's ``config.json`` alone; the weights and their sha256 stay.

    Used by :func:`save_bundle`, and to store facts found after training (the
    operating point chosen on validation) without writing the weights again.
    """
    path = Path(model_dir) / CONFIG_FILE
    path.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
        states[name] = load_checked(root / weights[name]["file"], weights[name]["sha256"])
    device = torch.device(device)
    detector = build_part_detector(ViTEncoder(vit), det)
    identifier = ImplantIdentifier(systems, attributes, width=int(ident["width"]))
    load_into(detector, states["detector"], root)
    load_into(identifier, states["identifier"], root)
    return detector.to(device).eval(), identifier.to(device).eval(), config
