"""``dicom-service train video``, ``eval video`` and ``eval stabilisation``.

Registered by :mod:`dicom_service.training.cli_train` and
:mod:`dicom_service.training.cli_eval`. Torch is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_service.domain import PRECISIONS, ConfigError
from dicom_service.vision.bundle_names import NOPRIOR_BUNDLE, RESTORATION_BUNDLE, SAM_BUNDLE

if TYPE_CHECKING:
    from dicom_service.training.train_restoration import RestorationTrainOptions
    from dicom_service.training.video_phantoms import VideoClip

#: Bundle folder (under ``--out``) of each restoration part of ``train video``, in training
#: order: ``restoration`` first, so that ``--prior-from-noprior`` reads the noprior bundle
#: before ``noprior`` is retrained.
RESTORATION_FOLDERS = {"restoration": RESTORATION_BUNDLE, "noprior": NOPRIOR_BUNDLE}


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="phantom data set (manifest.json + splits)")
    p.add_argument("--paired", type=Path, default=None, help="real paired clips: ROOT/<clip>/{LQ,HQ,masks}")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)


def add_video_train_parser(kinds: argparse._SubParsersAction) -> None:
    """Add ``train video`` to the ``train`` subcommand's kinds."""
    p = kinds.add_parser("video", help="seed 000/001's tooth SAM and restoration models on paired clips")
    _data_options(p)
    p.add_argument("--out", type=Path, required=True, help="models folder (tooth_sam/, video_restoration*/)")
    p.add_argument("--only", default="sam,restoration,noprior,sr2,interp2",
                   help="comma-separated parts to train: sam, restoration, noprior, sr2, interp2 (default: all)")
    p.add_argument("--sam-steps", type=int, default=3000)
    p.add_argument("--sam-lr", type=float, default=1e-3)
    p.add_argument("--sam-batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000, help="restoration training steps (each model)")
    p.add_argument("--batch-size", type=int, default=8, help="restoration crops per step")
    p.add_argument("--crop", type=int, default=96, help="restoration crop side (multiple of 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="restoration peak learning rate")
    p.add_argument("--width", type=int, default=24, help="restoration channels at half resolution")
    p.add_argument("--resume", action="store_true",
                   help="restoration/noprior: continue from the bundle already in --out (fresh schedule)")
    p.add_argument("--refine", action="store_true",
                   help="restoration/noprior: add the full-resolution refinement stage (with --resume it is grown "
                        "onto the bundle's model, starting as the same function)")
    p.add_argument("--bidirectional", action="store_true",
                   help="restoration/noprior: also fuse the flow-aligned next frame (with --resume it is grown "
                        "onto the bundle's model, starting as the same function)")
    p.add_argument("--ssim-weight", type=float, default=0.0,
                   help="restoration/noprior: weight of a (1 - SSIM) term added to the Smooth L1 loss")
    p.add_argument("--prior-from-noprior", action="store_true",
                   help="restoration: start from the no-prior bundle in --out with the tooth prior grown onto it "
                        "(starts as the same function; trained before noprior, so it reads the bundle as it was)")
    p.add_argument("--mask-dropout", type=float, default=0.0,
                   help="restoration: share of training samples whose tooth masks are emptied (a missed "
                        "segmentation), so the model does not depend on the mask")
    p.add_argument("--interframe-steps", type=int, default=2000, help="steps of the x2 SR and interpolation models")
    p.add_argument("--interframe-crop", type=int, default=48,
                   help="SR input crop side; the interpolation crop is twice it (multiple of 16)")
    p.set_defaults(func=cmd_train_video)


def add_video_eval_parser(kinds: argparse._SubParsersAction) -> None:
    """Add ``eval video`` to the ``eval`` subcommand's kinds."""
    p = kinds.add_parser("video", help="restoration, segmentation, flow and speed on a held-out split")
    _data_options(p)
    p.add_argument("--models", type=Path, default=None, help="models folder (default: the bundled models/)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for eval_video.json, eval_video.txt and contact_sheet.png")
    p.add_argument("--limit", type=int, default=None, help="first N clips of the split")
    p.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="restoration compute precision (default float32; auto: what the node picks on this device)")
    p.set_defaults(func=cmd_eval_video)
    s = kinds.add_parser("stabilisation", help="the node's stabilisation on long held-out phantom clips")
    s.add_argument("--models", type=Path, default=None, help="models folder (default: the bundled models/)")
    s.add_argument("--clips", type=int, default=24, help="clips to render (default 24, the test split's size)")
    s.add_argument("--frames", type=int, default=300, help="frames per clip at 30 fps (default 300: 10 s)")
    s.add_argument("--height", type=int, default=240)
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--split", default="test", help="the split whose clip seeds are rendered (default test)")
    s.add_argument("--seed", type=int, default=0, help="data set seed (clip seeds as phantoms video derives them)")
    s.add_argument("--smoothing", default="0.5,1,2",
                   help="camera-path moving-average lengths in seconds, comma-separated (default 0.5,1,2)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="restoration compute precision (default float32)")
    s.add_argument("--out", type=Path, default=None, help="folder for eval_stabilisation.json and .txt")
    s.set_defaults(func=cmd_eval_stabilisation)


def _log(record: dict[str, Any]) -> None:
    print(json.dumps(record), file=sys.stderr, flush=True)


def _train_command(args: argparse.Namespace) -> str:
    """The ``train video`` command line with every option explicit (recorded in the bundles)."""
    source = ["--data", str(args.data)] if args.data is not None else ["--paired", str(args.paired)]
    parts = ["dicom-service", "train", "video", *source, "--out", str(args.out), "--only", args.only,
             "--sam-steps", str(args.sam_steps), "--sam-lr", str(args.sam_lr),
             "--sam-batch-size", str(args.sam_batch_size), "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--crop", str(args.crop), "--lr", str(args.lr),
             "--width", str(args.width), "--interframe-steps", str(args.interframe_steps),
             "--interframe-crop", str(args.interframe_crop), "--device", args.device, "--seed", str(args.seed)]
    if args.resume:
        parts.append("--resume")
    if args.refine:
        parts.append("--refine")
    if args.bidirectional:
        parts.append("--bidirectional")
    if args.ssim_weight:
        parts += ["--ssim-weight", str(args.ssim_weight)]
    if args.prior_from_noprior:
        parts.append("--prior-from-noprior")
    if args.mask_dropout:
        parts += ["--mask-dropout", str(args.mask_dropout)]
    return shlex.join(parts)


def check_out_folder(out: Path) -> None:
    """``ValueError`` when ``out`` exists but is not a folder (checked before any training)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the bundle")


def _check_options(args: argparse.Namespace) -> None:
    """``ValueError`` naming the first bad ``--sam-*`` option, or an ``--out`` that is a file."""
    if args.sam_steps < 1 or args.sam_batch_size < 1:
        raise ValueError(f"--sam-steps and --sam-batch-size must be >= 1, got {args.sam_steps}, {args.sam_batch_size}")
    if not args.sam_lr > 0:
        raise ValueError(f"--sam-lr must be > 0, got {args.sam_lr}")
    check_out_folder(args.out)


def _unmasked(clips: list[VideoClip]) -> list[str]:
    """Names of the clips without tooth masks."""
    return [c.name for c in clips if c.masks is None]


def mask_bundle(out: Path, parts: list[str], clips: list[VideoClip], bundled: Path | None = None) -> Path | None:
    """The SAM bundle that gives tooth masks to the clips without them, or None when not needed.

    Needed when a restoration part is trained and a clip has no ``masks/``. The bundle
    in ``out`` is used when it is there (or trained by this run, ``sam`` in ``parts``),
    else the repository's (``bundled``, default: ``models/tooth_sam``).

    Raises
    ------
    ValueError
        Masks are needed and neither bundle exists.
    """
    from dicom_service.vision.registry import default_models_dir

    if not _unmasked(clips) or not {"restoration", "noprior"} & set(parts):
        return None
    bundled = bundled or default_models_dir() / SAM_BUNDLE
    if (out / SAM_BUNDLE / "config.json").is_file() or "sam" in parts:
        return out / SAM_BUNDLE
    if (bundled / "config.json").is_file():
        return bundled
    raise ValueError(f"clips without masks/ ({', '.join(_unmasked(clips)[:5])}) need tooth masks from a SAM "
                     f"bundle, but there is none in {out / SAM_BUNDLE} nor in {bundled}: "
                     "add masks/ folders, or train one first with --only sam")


def cmd_train_video(args: argparse.Namespace) -> int:
    """Train the parts named by ``--only`` and write their bundles; 2 on bad arguments or data.

    Options, the data (paired clips: every one read), the tooth masks the parts need and
    the bundles they start from are checked before any training.
    """
    from dicom_service.training.train_restoration import RestorationTrainOptions
    from dicom_service.training.video_recipe import PARTS, load_training_clips
    from dicom_service.vision.registry import resolve_device

    try:
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or not parts:
            raise ValueError(f"--only: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
        device = resolve_device(args.device)
        opts = RestorationTrainOptions(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                                       ssim_weight=args.ssim_weight, mask_dropout=args.mask_dropout, seed=args.seed)
        opts.validate()
        if args.width < 4 or args.interframe_steps < 1:
            raise ValueError("--width must be >= 4, --interframe-steps >= 1")
        if args.interframe_crop < 8 or args.interframe_crop % 8:
            raise ValueError(f"--interframe-crop must be a positive multiple of 8, got {args.interframe_crop}")
        _check_options(args)
        train = load_training_clips(args.data, args.paired, "train")
        val = load_training_clips(args.data, args.paired, "val")
        if "sam" in parts and _unmasked(train):
            raise ValueError(f"training the tooth SAM needs tooth masks for every training clip; without masks/: "
                             f"{', '.join(_unmasked(train)[:5])} (train the other parts with --only, which take "
                             "masks from a SAM bundle)")
        masks_from = mask_bundle(args.out, parts, train + val)
        for part, folder in RESTORATION_FOLDERS.items():
            grown = part == "restoration" and args.prior_from_noprior  # starts from the noprior bundle instead
            if args.resume and part in parts and not grown and not (args.out / folder / "config.json").is_file():
                raise ValueError(f"--resume: no {part} bundle to continue in {args.out / folder}")
        noprior_folder = args.out / RESTORATION_FOLDERS["noprior"]
        if args.prior_from_noprior and "restoration" not in parts:
            raise ValueError("--prior-from-noprior applies to the restoration part: add it to --only")
        if args.prior_from_noprior and not (noprior_folder / "config.json").is_file():
            raise ValueError(f"--prior-from-noprior: no noprior bundle in {noprior_folder}")
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        print(f"dicom-service train video: {exc}", file=sys.stderr)
        return 2
    facts = {"command": _train_command(args),
             "data": str(args.data or args.paired), "train_clips": len(train), "val_clips": len(val)}
    try:
        summary = _train_parts(args, parts, train, val, masks_from, opts, device, facts)
    except (ValueError, OSError) as exc:  # input errors found while training: no traceback
        print(f"dicom-service train video: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _train_parts(args: argparse.Namespace, parts: list[str], train: list[VideoClip], val: list[VideoClip],
                 masks_from: Path | None, opts: RestorationTrainOptions, device: str, facts: dict[str, Any]
                 ) -> dict[str, Any]:
    """Train each part of ``parts`` in order (clips without masks get them from ``masks_from``)."""
    from dicom_service.training.video_recipe import (
        train_interframe_bundle,
        train_restoration_bundle,
        train_sam_bundle,
        with_masks,
    )

    summary: dict[str, Any] = {}
    if "sam" in parts:
        summary["sam"] = train_sam_bundle(train, val, args.out, steps=args.sam_steps, batch_size=args.sam_batch_size,
                                          lr=args.sam_lr, seed=args.seed, device=device, facts=facts, log=_log)
    if masks_from is not None:
        from dicom_service.vision.tooth_predictor import ToothSegmenter
        from dicom_service.vision.tooth_sam import load_sam_bundle
        from dicom_service.vision.video_runtime import automatic_masks

        _log({"stage": "masks", "clips_without_masks": _unmasked(train + val), "sam_bundle": str(masks_from)})
        segmenter = ToothSegmenter(load_sam_bundle(masks_from, device)[0])
        train = with_masks(train, lambda frames: automatic_masks(segmenter, frames))
        val = with_masks(val, lambda frames: automatic_masks(segmenter, frames))
    noprior_folder = args.out / RESTORATION_FOLDERS["noprior"]
    for part, folder in RESTORATION_FOLDERS.items():
        if part in parts:
            prior = part == "restoration"
            grow_from = noprior_folder if prior and args.prior_from_noprior else None
            summary[part] = train_restoration_bundle(train, val, args.out / folder, use_prior=prior,
                                                     width=args.width, opts=opts, device=device,
                                                     facts=facts, log=_log, resume=args.resume,
                                                     refine=args.refine, bidirectional=args.bidirectional,
                                                     prior_from=grow_from)
    for part in ("sr2", "interp2"):
        if part in parts:
            summary[part] = train_interframe_bundle(part, train, val, args.out, steps=args.interframe_steps,
                                                    crop=args.interframe_crop, seed=args.seed, device=device,
                                                    facts=facts, log=_log)
    return summary


def cmd_eval_video(args: argparse.Namespace) -> int:
    """Measure the bundled video models on a held-out split; 2 on bad arguments or data."""
    from dicom_service.training.evaluate_video import evaluate_video, metrics_table
    from dicom_service.training.video_recipe import load_training_clips
    from dicom_service.vision.registry import default_models_dir, resolve_device

    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be >= 1")
        device = resolve_device(args.device)
        clips = load_training_clips(args.data, args.paired, args.split)[: args.limit]
        report = evaluate_video(clips, args.models or default_models_dir(), device=device, out_dir=args.out,
                                precision=args.precision)
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        print(f"dicom-service eval video: {exc}", file=sys.stderr)
        return 2
    print(metrics_table(report))
    return 0


def cmd_eval_stabilisation(args: argparse.Namespace) -> int:
    """Judge the node's stabilisation on long phantom clips; 2 on bad arguments."""
    from dicom_service.training.evaluate_long_clips import evaluate_long_clips, stabilisation_table
    from dicom_service.vision.registry import default_models_dir, resolve_device

    try:
        smoothing = [float(v) for v in args.smoothing.split(",") if v.strip()]
    except ValueError:
        print(f"dicom-service eval stabilisation: --smoothing {args.smoothing!r} is not a list of seconds",
              file=sys.stderr)
        return 2
    try:
        report = evaluate_long_clips(args.models or default_models_dir(), clips=args.clips, frames=args.frames,
                                     seed=args.seed, split=args.split, height=args.height, width=args.width,
                                     smoothing=smoothing, device=resolve_device(args.device),
                                     precision=args.precision, out_dir=args.out,
                                     log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        print(f"dicom-service eval stabilisation: {exc}", file=sys.stderr)
        return 2
    print(stabilisation_table(report))
    return 0
