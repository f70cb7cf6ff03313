"""Weights on disk: safetensors files checked by sha256 (no pickles anywhere)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

BUNDLE_CONFIG = "config.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_module(module: nn.Module, path: Path) -> str:
    """Write a module's state dict (CPU, contiguous) as safetensors; return its sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    # one metadata key only: safetensors writes a multi-key metadata map in random order
    save_file(state, str(path), metadata={"format": "pt"})
    return sha256_file(path)


def load_checked(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file on the CPU after checking its sha256.

    Raises
    ------
    FileNotFoundError
        The file is missing.
    ValueError
        The sha256 differs.
    """
    if sha256_file(path) != sha256:
        raise ValueError(f"{path}: sha256 differs from the bundle's config.json")
    return load_file(str(path), device="cpu")


def load_into(module: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """``load_state_dict(strict=True)`` with a ValueError naming the bundle on mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{where}: weights do not fit the configured architecture: {exc}") from exc


def write_bundle(folder: Path, module: nn.Module, weights_file: str, doc: Mapping[str, Any]) -> Path:
    """Write ``module`` as ``folder/weights_file`` and ``folder/config.json`` = ``doc`` plus
    ``weights: {file, sha256}``; return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = save_module(module, folder / weights_file)
    config = {**doc, "weights": {"file": weights_file, "sha256": digest}}
    path = folder / BUNDLE_CONFIG
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_bundle(folder: Path, build: Callable[[dict[str, Any]], nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a :func:`write_bundle` module: ``build(config)`` makes the architecture, the
    checked weights are loaded into it.

    Raises
    ------
    FileNotFoundError
        ``config.json`` or the weights are missing.
    ValueError
        A missing or bad config key, a sha256 mismatch, or weights that do not fit.
    """
    config = json.loads((folder / BUNDLE_CONFIG).read_text(encoding="utf-8"))
    try:
        module = build(config)
        weights = config["weights"]
        file, digest = weights["file"], weights["sha256"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{folder / BUNDLE_CONFIG}: missing or bad key: {exc}") from exc
    load_into(module, load_checked(folder / file, digest), folder)
    return module, config
