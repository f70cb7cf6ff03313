"""Seed 002's training recipe, stage by stage, shared by ``train implants`` and the ablation.

:class:`~dicom_service.training.train_options.TrainOptions` holds every knob of a run;
the functions below run one stage each on a
:class:`~dicom_service.training.coco.CocoDataset`, after :func:`check_training_data`
has refused a data set a stage cannot train on:

1. :func:`pretrained_encoder`: a ViT, randomly initialised or MDE / MAE pre-trained on
   the training images (no labels);
2. :func:`fine_tuned_detector`: Mask R-CNN on the design parts (two-stage model) or on
   whole implants (the one-stage ablation);
3. :func:`trained_identifier`: the stage-2 system / attribute classifier on implant
   crops, with its temperature fitted on the validation crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torchvision.models.detection import MaskRCNN

from dicom_service.training import train_implants as ti
from dicom_service.training.coco import CocoDataset
from dicom_service.training.implant_data import (
    ImplantCropDataset,
    PartDetectionDataset,
    UnlabelledImages,
    label_space,
)
from dicom_service.training.train_options import PRETRAIN_BASE_LR, TrainOptions
from dicom_service.vision.implant_identifier import ImplantIdentifier
from dicom_service.vision.part_detector import PART_CLASSES, DetectorConfig
from dicom_service.vision.vit import VIT_SIZES, ViTEncoder

#: Classes of the one-stage ablation detector (whole implants, no design parts).
IMPLANT_CLASSES: tuple[str, ...] = ("background", "implant")
#: The stages :func:`check_training_data` can check for.
STAGES: tuple[str, ...] = ("detector", "identifier")


def check_training_data(coco: CocoDataset, opts: TrainOptions, stages: Sequence[str] = STAGES) -> None:
    """Refuse, before any training, a data set on which ``stages`` cannot train.

    The detector needs design parts (``coronal``, ``middle``, ``apical``) on the train
    split; the identifier needs ``implant`` annotations with a ``system`` there (those
    without one are left out of it). Only the first ``opts.limit_images`` training images
    count, as in training. No stage (``--only thresholds``): nothing to check.

    Raises
    ------
    ValueError
        Naming what is missing and how many images each split has.
    """
    if not stages:
        return
    train = sorted(coco.split("train"), key=lambda im: im.id)[: opts.limit_images]
    counts = ", ".join(f"{name} {len(coco.split(name))}" for name in ("train", "val", "test"))
    if not train:
        raise ValueError(f"the train split has no image (images per split: {counts})")
    used = {im.id for im in train}
    anns = [a for a in coco.annotations if a.image_id in used]
    scope = "the train split" if opts.limit_images is None else f"the first {len(train)} train images"
    if "detector" in stages and not any(a.category in PART_CLASSES[1:] for a in anns):
        raise ValueError(f"{scope} has no coronal, middle or apical annotation: the detector is trained on "
                         f"implants' design parts (images per split: {counts})")
    if "identifier" in stages and not any(a.category == "implant" and a.system is not None for a in anns):
        raise ValueError(f"{scope} has no implant annotation with a \"system\": the identifier needs at least "
                         "one implant system to learn (implants without one are left out of it)")


def pretrained_encoder(coco: CocoDataset, opts: TrainOptions, device: torch.device,
                       log: ti.EpochLog | None = None) -> ViTEncoder:
    """A ViT of size ``opts.vit`` at ``opts.img_size``: random, or MDE / MAE pre-trained on the train split."""
    ti.seed_everything(opts.seed)
    encoder = ViTEncoder(replace(VIT_SIZES[opts.vit], img_size=opts.img_size))
    if opts.init == "random" or opts.pretrain_epochs == 0:
        return encoder.to(device)
    images = UnlabelledImages(coco, "train", opts.img_size, augment=True, limit=opts.limit_images)
    return ti.pretrain_encoder(images, encoder, opts.init, opts.pretrain_epochs, opts.batch_size,
                               opts.peak_pretrain_lr, opts.mask_ratio, opts.warmup_epochs, device, log,
                               seed=opts.seed)


def fine_tuned_detector(coco: CocoDataset, encoder: ViTEncoder | MaskRCNN, opts: TrainOptions, device: torch.device,
                        log: ti.EpochLog | None = None, *, categories: tuple[str, ...] = PART_CLASSES
                        ) -> tuple[MaskRCNN, dict[str, int]]:
    """Mask R-CNN fine-tuned from ``encoder`` on ``categories``; returns it and the window counts per split.

    ``encoder`` may be a trained detector, whose training then continues.
    """
    ti.seed_everything(opts.seed + 1)
    train = PartDetectionDataset(coco, "train", opts.img_size, augment=True, limit=opts.limit_images,
                                 categories=categories)
    val = PartDetectionDataset(coco, "val", opts.img_size, limit=opts.limit_images, categories=categories)
    detector = ti.train_detector(train, val, encoder, opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
                                 warmup_epochs=opts.warmup_epochs, device=device, log=log, seed=opts.seed,
                                 detector_config=DetectorConfig(num_classes=len(categories)))
    return detector, {"train": len(train), "val": len(val)}


def trained_identifier(coco: CocoDataset, opts: TrainOptions, device: torch.device,
                       log: ti.EpochLog | None = None) -> tuple[ImplantIdentifier, dict[str, int]]:
    """The stage-2 identifier trained on the implant crops; returns it and the crop counts per split."""
    ti.seed_everything(opts.seed + 2)
    systems, attributes = label_space(coco)
    train = ImplantCropDataset(coco, "train", systems, attributes, augment=True, limit=opts.limit_images)
    val = ImplantCropDataset(coco, "val", systems, attributes, limit=opts.limit_images)
    identifier = ti.train_identifier(train, val, systems, attributes, opts.identifier_epochs,
                                     batch_size=max(opts.batch_size, 32), warmup_epochs=min(opts.warmup_epochs, 2),
                                     device=device, log=log, seed=opts.seed)
    return identifier, {"train": len(train), "val": len(val)}


__all__ = ["IMPLANT_CLASSES", "PRETRAIN_BASE_LR", "STAGES", "TrainOptions", "check_training_data",
           "fine_tuned_detector", "pretrained_encoder", "trained_identifier"]
