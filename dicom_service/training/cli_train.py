"""``dicom-service train implants``: pre-train, fine-tune and bundle seed 002's implant models.

Registered in :mod:`dicom_service.cli` by :func:`add_train_parser`. Torch is imported
only when the command runs, so the rest of the CLI works without the ``ml`` extra.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from dicom_service.training.cli_video import add_video_train_parser, check_out_folder
from dicom_service.training.train_options import VIT_NAMES, TrainOptions


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand (``train implants ...``, ``train video ...``) to the CLI's subparsers."""
    train = sub.add_parser("train", help="train the bundled models (implants on COCO, video on paired clips)")
    kinds = train.add_subparsers(dest="kind", required=True, metavar="{implants,video}")
    p = kinds.add_parser("implants", help="seed 002's implant models on a COCO data set")
    p.add_argument("--coco", required=True, type=Path, help="annotations.json (images relative to it)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder (config.json + safetensors)")
    add_training_options(p)
    p.add_argument("--only", choices=["identifier", "detector", "thresholds", "calibration"], default=None,
                   help="identifier: retrain only the stage-2 identifier of the bundle in --out; detector: continue "
                        "training its detector for --epochs (the other model is kept as is); thresholds: only "
                        "choose the bundle's operating point again on the validation split (weights untouched); "
                        "calibration: only fit the identifier's temperature again on the validation findings")
    p.set_defaults(func=cmd_train_implants)
    add_video_train_parser(kinds)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`TrainOptions` (shared by ``train implants`` and the ablation)."""
    p.add_argument("--init", choices=["mde", "mae", "random"], default="mde", help="encoder initialisation")
    p.add_argument("--vit", choices=VIT_NAMES, default="cpu", help="encoder size")
    p.add_argument("--pretrain-epochs", type=int, default=100)
    p.add_argument("--epochs", type=int, default=50, help="detector fine-tuning epochs")
    p.add_argument("--identifier-epochs", type=int, default=40)
    p.add_argument("--warmup-epochs", type=int, default=10, help="linear warm-up (capped at half a stage)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mask-ratio", type=float, default=0.25, help="MDE/MAE masked fraction of patches")
    p.add_argument("--pretrain-lr", type=float, default=None,
                   help="peak pre-training learning rate (default: seed 002's 1.5e-4 x batch / 256)")
    p.add_argument("--lr", type=float, default=1e-4, help="detector fine-tuning learning rate (seed 002: 1e-4)")
    p.add_argument("--img-size", type=int, default=416, help="square model input side (multiple of 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-images", type=int, default=None, help="first N images of each split (smoke runs)")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The :class:`TrainOptions` of parsed ``train implants`` arguments (validated)."""
    opts = TrainOptions(init=args.init, vit=args.vit, img_size=args.img_size, pretrain_epochs=args.pretrain_epochs,
                        epochs=args.epochs, identifier_epochs=args.identifier_epochs,
                        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, mask_ratio=args.mask_ratio,
                        pretrain_lr=args.pretrain_lr, lr=args.lr, seed=args.seed, limit_images=args.limit_images)
    opts.validate()
    return opts


def _command(args: argparse.Namespace) -> str:
    """The full command line with every option explicit (recorded in config.json)."""
    parts = ["dicom-service", "train", "implants", "--coco", str(args.coco), "--out", str(args.out),
             "--init", args.init, "--vit", args.vit, "--pretrain-epochs", str(args.pretrain_epochs),
             "--epochs", str(args.epochs), "--identifier-epochs", str(args.identifier_epochs),
             "--warmup-epochs", str(args.warmup_epochs), "--batch-size", str(args.batch_size),
             "--mask-ratio", str(args.mask_ratio), "--img-size", str(args.img_size), "--device", args.device,
             "--seed", str(args.seed), "--lr", str(args.lr)]
    if args.pretrain_lr is not None:
        parts += ["--pretrain-lr", str(args.pretrain_lr)]
    if args.limit_images is not None:
        parts += ["--limit-images", str(args.limit_images)]
    if getattr(args, "only", None):
        parts += ["--only", args.only]
    return shlex.join(parts)


#: What each ``--only`` value trains (:func:`~dicom_service.training.implant_recipe.check_training_data`).
_ONLY_STAGES: dict[str | None, tuple[str, ...]] = {None: ("detector", "identifier"), "identifier": ("identifier",),
                                                   "detector": ("detector",), "thresholds": (), "calibration": ()}


def cmd_train_implants(args: argparse.Namespace) -> int:
    """Pre-training (unless ``--init random``) → detector → identifier → bundle; print a JSON summary.

    Options, the ``--out`` folder and the data set (files, sizes, categories, splits,
    and what each stage needs) are checked before any training; bad ones, and input
    errors found during training, exit 2 with a message.
    """
    from dicom_service.training import implant_recipe as recipe
    from dicom_service.training.coco import load_coco
    from dicom_service.training.train_implants import resolve_device

    try:
        opts = options_from_args(args)
        device = resolve_device(args.device)
        check_out_folder(args.out)
        coco = load_coco(args.coco)
        recipe.check_training_data(coco, opts, _ONLY_STAGES[args.only])
    except (ValueError, FileNotFoundError) as exc:
        print(f"dicom-service train: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    history: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)

    def last(stage: str) -> dict[str, Any] | None:
        return next((r for r in reversed(history) if r["stage"] == stage), None)

    try:
        if args.only is not None:
            return _retrain_one(args, opts, coco, device, log, last, started)
        return _train_all(args, opts, coco, device, log, last, started)
    except (ValueError, OSError) as exc:  # input errors found while training (unreadable files too): no traceback
        print(f"dicom-service train: {exc}", file=sys.stderr)
        return 2


def _train_all(args: argparse.Namespace, opts: TrainOptions, coco: Any, device: Any,
               log: Any, last: Any, started: float) -> int:
    """The full run: encoder, detector, identifier, bundle, operating point; print the summary."""
    from dicom_service.training import implant_recipe as recipe
    from dicom_service.vision.implant_bundle import save_bundle

    encoder = recipe.pretrained_encoder(coco, opts, device, log)
    detector, images = recipe.fine_tuned_detector(coco, encoder, opts, device, log)
    identifier, crops = recipe.trained_identifier(coco, opts, device, log)

    config = {
        "init": opts.init, "mask_ratio": opts.mask_ratio, "command": _command(args),
        "dataset": {"path": str(args.coco), "seed": opts.seed, "limit_images": opts.limit_images,
                    "images": images, "crops": crops},
        "seed": opts.seed, "device": str(device),
        "pretrain": {"objective": opts.init, "epochs": opts.pretrain_epochs if opts.init != "random" else 0,
                     "base_lr": recipe.PRETRAIN_BASE_LR, "lr": opts.peak_pretrain_lr, "last": last("pretrain")},
        "fine_tune": {"epochs": opts.epochs, "lr": opts.lr, "weight_decay": 0.05, "last": last("detector")},
        "identifier_training": {"epochs": opts.identifier_epochs, "last": last("identifier"),
                                "temperature_fitted": crops["val"] > 0},
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    path = save_bundle(args.out, detector, identifier, config)
    thresholds = _choose_thresholds(path, detector, identifier, coco, device, opts)
    print(json.dumps({"bundle": str(path.parent), "config": str(path), "init": opts.init, "device": str(device),
                      "images": images, "crops": crops, "temperature": float(identifier.temperature),
                      "thresholds": thresholds, "seconds": round(time.perf_counter() - started, 2)}))
    return 0


def _choose_thresholds(config_path: Path, detector: Any, identifier: Any, coco: Any, device: Any,
                       opts: TrainOptions, *, calibrate: bool = True) -> dict[str, Any] | None:
    """Choose the operating point of the bundle just saved (its models are still in
    memory) on the validation split and store it in the bundle's ``config.json``; None
    (and the runtime's fallbacks) when validation has no implant.

    With ``calibrate`` the identifier's temperature is then fitted again on the crops of
    the validation findings at that point (:mod:`~dicom_service.training.calibrate_identifier`)
    and the bundle saved again (the temperature is part of the identifier's weights).
    """
    from dicom_service.training.tune_implant_thresholds import tune_operating_point
    from dicom_service.vision.implant_bundle import save_bundle, write_config
    from dicom_service.vision.implant_runtime import LearnedImplantRuntime

    config = json.loads(config_path.read_text(encoding="utf-8"))
    runtime = LearnedImplantRuntime.from_models(detector, identifier, config, str(device))
    try:
        thresholds = tune_operating_point(runtime, coco, split="val", limit=opts.limit_images)
    except ValueError as exc:
        print(f"dicom-service train: thresholds not chosen ({exc}); the runtime's defaults apply", file=sys.stderr)
        thresholds = None
    config["thresholds"] = thresholds
    if calibrate:
        _calibrate(runtime, coco, opts, config)
        save_bundle(config_path.parent, detector, identifier, config)
    else:
        write_config(config_path.parent, config)
    return thresholds


def _calibrate(runtime: Any, coco: Any, opts: TrainOptions, config: dict[str, Any]) -> None:
    """Fit the temperature on detected validation boxes; record it in ``config["calibration"]``."""
    from dicom_service.training.calibrate_identifier import calibrate_on_detections

    calibration = calibrate_on_detections(runtime, coco, split="val", limit=opts.limit_images)
    print(json.dumps({"stage": "calibration", **calibration}), file=sys.stderr, flush=True)
    config["calibration"] = calibration


def _retrain_one(args: argparse.Namespace, opts: TrainOptions, coco: Any, device: Any,
                 log: Any, last: Any, started: float) -> int:
    """``--only identifier|detector``: train one model of an existing bundle, keep the other."""
    from dicom_service.training import implant_recipe as recipe
    from dicom_service.vision.implant_bundle import CONFIG_FILE, load_bundle, save_bundle

    try:
        detector, identifier, config = load_bundle(args.out, "cpu")
    except (FileNotFoundError, ValueError) as exc:
        print(f"dicom-service train: --only {args.only} needs a bundle in --out: {exc}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {}
    if args.only == "thresholds":
        summary["thresholds"] = _choose_thresholds(args.out / CONFIG_FILE, detector, identifier, coco, device, opts,
                                                   calibrate=False)
        print(json.dumps({"bundle": str(args.out), "only": args.only, **summary,
                          "seconds": round(time.perf_counter() - started, 2)}))
        return 0
    if args.only == "calibration":
        from dicom_service.vision.implant_runtime import LearnedImplantRuntime

        runtime = LearnedImplantRuntime.from_models(detector, identifier, config, str(device))
        _calibrate(runtime, coco, opts, config)
        save_bundle(args.out, detector, identifier, config)
        print(json.dumps({"bundle": str(args.out), "only": args.only, "calibration": config["calibration"],
                          "seconds": round(time.perf_counter() - started, 2)}))
        return 0
    if args.only == "identifier":
        identifier, crops = recipe.trained_identifier(coco, opts, device, log)
        config["dataset"]["crops"] = summary["crops"] = crops
        config["identifier_training"] = {"epochs": opts.identifier_epochs, "last": last("identifier"),
                                         "temperature_fitted": crops["val"] > 0, "command": _command(args)}
    else:
        detector, images = recipe.fine_tuned_detector(coco, detector, opts, device, log)
        continued = config.setdefault("fine_tune_continued", [])
        continued.append({"epochs": opts.epochs, "lr": opts.lr, "last": last("detector"), "command": _command(args)})
        summary["images"] = images
    path = save_bundle(args.out, detector, identifier, config)
    summary["thresholds"] = _choose_thresholds(path, detector, identifier, coco, device, opts)
    print(json.dumps({"bundle": str(path.parent), "config": str(path), "only": args.only, **summary,
                      "temperature": float(identifier.temperature),
                      "seconds": round(time.perf_counter() - started, 2)}))
    return 0
