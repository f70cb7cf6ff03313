"""Training loops of seed 002's implant models and their safetensors bundle.

Three stages, each an AdamW loop with a linear warm-up then cosine decay stepped per
iteration (:func:`warmup_cosine`):

1. :func:`pretrain_encoder`: MDE or MAE masked-image pre-training of the ViT (seed 002:
   betas 0.9 / 0.95, weight decay 0.05, mask ratio 25%, patch 16);
2. :func:`train_detector`: Mask R-CNN fine-tuning of the design-part detector (seed 002:
   lr 1e-4, weight decay 0.05);
3. :func:`train_identifier`: the system / attribute classifier, then temperature scaling
   on the validation crops.

The trained models are written with
:func:`dicom_service.vision.implant_bundle.save_bundle`. Runs are repeatable on the CPU
for a given seed; CUDA kernels used by Mask R-CNN are not bit-deterministic.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import MaskRCNN

from dicom_service.training.implant_data import collate_detection
from dicom_service.training.mim import MaskedImageModel, MIMConfig, Objective
from dicom_service.training.optim import optimiser_step, warmup_cosine
from dicom_service.vision.implant_identifier import ImplantIdentifier, fit_temperature
from dicom_service.vision.part_detector import DetectorConfig, build_part_detector
from dicom_service.vision.vit import ViTEncoder

#: Receives one record per epoch: ``{"stage", "epoch", "loss", "lr", "seconds", ...}``.
EpochLog = Callable[[dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA); ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises
    ------
    ValueError
        A name torch does not know (``"gpu"``), or CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def _adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and other 1-D parameters (MAE convention)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def _loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, collate: Callable | None = None) -> DataLoader:
    if len(ds) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot train on an empty data set")
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def _emit(log: EpochLog | None, record: dict[str, Any]) -> None:
    if log is not None:
        log(record)


def pretrain_encoder(images_ds: Dataset, encoder: ViTEncoder, objective: Objective, epochs: int, batch_size: int,
                     lr: float, mask_ratio: float = 0.25, warmup_epochs: int = 10,
                     device: torch.device | str = "cpu", log: EpochLog | None = None, *, seed: int = 0,
                     weight_decay: float = 0.05) -> ViTEncoder:
    """MDE / MAE pre-training; returns the same ``encoder``, trained, on ``device``.

    Parameters
    ----------
    images_ds : Dataset
        Items ``(1, S, S)`` float32 images, ``S = encoder.config.img_size``.
    objective : {"mde", "mae"}
    lr : float
        Peak learning rate (the caller applies seed 002's ``base_lr * batch / 256``).
    """
    device = torch.device(device)
    model = MaskedImageModel(encoder, MIMConfig(objective=objective, mask_ratio=mask_ratio)).to(device)
    loader = _loader(images_ds, batch_size, True, seed)
    optimizer = _adamw(model, lr, weight_decay, (0.9, 0.95))
    scheduler = warmup_cosine(optimizer, epochs * len(loader), warmup_epochs * len(loader))
    masks = torch.Generator(device=device).manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for images in loader:
            loss, _ = model(images.to(device), generator=masks)
            lr = optimiser_step(loss, optimizer, scheduler)
            model.update_teacher()
            total, count = total + float(loss.detach()), count + 1
        _emit(log, {"stage": "pretrain", "objective": objective, "epoch": epoch + 1, "loss": total / count,
                    "lr": lr, "seconds": time.perf_counter() - start})
    return model.encoder


def _to_device(images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], device: torch.device
               ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return [i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


def _detector_loss(detector: MaskRCNN, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
                   ) -> torch.Tensor:
    losses = detector(images, targets)
    return torch.stack(list(losses.values())).sum()


def train_detector(ds_train: Dataset, ds_val: Dataset | None, encoder: ViTEncoder | MaskRCNN, epochs: int, *,
                   batch_size: int = 4, lr: float = 1e-4, weight_decay: float = 0.05, warmup_epochs: int = 10,
                   device: torch.device | str = "cpu", log: EpochLog | None = None, seed: int = 0,
                   clip_norm: float = 1.0, detector_config: DetectorConfig | None = None) -> MaskRCNN:
    """Fine-tune Mask R-CNN on design parts with the (pre-trained) ``encoder`` as backbone.

    ``encoder`` may also be a detector already built (and trained): training then
    continues from its weights with a fresh warm-up / cosine schedule.

    Parameters
    ----------
    ds_train, ds_val : Dataset
        :class:`~dicom_service.training.implant_data.PartDetectionDataset` items;
        ``ds_val`` (optional, may be empty) gives a validation loss per epoch.
    clip_norm : float
        Gradient norm clipping (0 disables).
    detector_config : DetectorConfig, optional
        Neck and head sizes (defaults: :class:`DetectorConfig`).

    Returns
    -------
    MaskRCNN
        In eval mode, on ``device``.
    """
    device = torch.device(device)
    if isinstance(encoder, MaskRCNN):
        detector = encoder.to(device)
    else:
        detector = build_part_detector(encoder, detector_config).to(device)
    loader = _loader(ds_train, batch_size, True, seed, collate_detection)
    optimizer = _adamw(detector, lr, weight_decay, (0.9, 0.999))
    scheduler = warmup_cosine(optimizer, epochs * len(loader), warmup_epochs * len(loader))
    for epoch in range(epochs):
        detector.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for images, targets in loader:
            loss = _detector_loss(detector, *_to_device(images, targets, device))
            lr = optimiser_step(loss, optimizer, scheduler, (detector, clip_norm))
            total, count = total + float(loss.detach()), count + 1
        record = {"stage": "detector", "epoch": epoch + 1, "loss": total / count,
                  "lr": lr, "seconds": time.perf_counter() - start}
        if ds_val is not None and len(ds_val) > 0:  # type: ignore[arg-type]
            with torch.no_grad():  # train mode (no batch norm in the model): losses without updates
                val = [float(_detector_loss(detector, *_to_device(i, t, device)))
                       for i, t in _loader(ds_val, batch_size, False, seed, collate_detection)]
            record["val_loss"] = sum(val) / len(val)
        _emit(log, record)
    return detector.eval()


def _identifier_batches(identifier: ImplantIdentifier, ds: Dataset, batch_size: int, device: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """System logits ``(N, S)`` and targets ``(N,)`` of a crop data set, in eval mode, on the CPU."""
    identifier.eval()
    logits, targets = [], []
    with torch.no_grad():
        for crops, systems, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
            logits.append(identifier(crops.to(device))[0].cpu())
            targets.append(systems)
    return torch.cat(logits), torch.cat(targets)


def train_identifier(crops_train: Dataset, crops_val: Dataset | None, systems: Sequence[str],
                     attributes: Mapping[str, Sequence[str]], epochs: int, *, batch_size: int = 32,
                     lr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: int = 2,
                     device: torch.device | str = "cpu", log: EpochLog | None = None, seed: int = 0
                     ) -> ImplantIdentifier:
    """Train the stage-2 identifier on implant crops, then fit its temperature on ``crops_val``.

    Parameters
    ----------
    crops_train, crops_val : Dataset
        :class:`~dicom_service.training.implant_data.ImplantCropDataset` items. With no
        (or an empty) validation set the temperature stays 1.

    Returns
    -------
    ImplantIdentifier
        In eval mode, on ``device``; ``temperature`` set. Validation accuracy of the
        system head is logged per epoch as ``val_system_accuracy``.
    """
    device = torch.device(device)
    identifier = ImplantIdentifier(systems, attributes).to(device)
    loader = _loader(crops_train, batch_size, True, seed)
    optimizer = _adamw(identifier, lr, weight_decay, (0.9, 0.999))
    scheduler = warmup_cosine(optimizer, epochs * len(loader), warmup_epochs * len(loader))
    has_val = crops_val is not None and len(crops_val) > 0  # type: ignore[arg-type]
    for epoch in range(epochs):
        identifier.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for crops, system, attrs in loader:
            loss = identifier.loss(crops.to(device), system.to(device), {k: v.to(device) for k, v in attrs.items()})
            lr = optimiser_step(loss, optimizer, scheduler)
            total, count = total + float(loss.detach()), count + 1
        record = {"stage": "identifier", "epoch": epoch + 1, "loss": total / count,
                  "lr": lr, "seconds": time.perf_counter() - start}
        if has_val:
            logits, targets = _identifier_batches(identifier, crops_val, batch_size, device)  # type: ignore[arg-type]
            record["val_system_accuracy"] = float((logits.argmax(1) == targets).float().mean())
        _emit(log, record)
    if has_val:
        logits, targets = _identifier_batches(identifier, crops_val, batch_size, device)  # type: ignore[arg-type]
        identifier.temperature.fill_(fit_temperature(logits, targets))
    return identifier.eval()
