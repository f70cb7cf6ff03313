"""``dicom-service eval implants`` and ``eval implants-ablation``: held-out metrics and seed 002's ablations.

Registered in :mod:`dicom_service.cli` by :func:`add_eval_parser`. Torch is imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dicom_service.training.cli_train import add_training_options, options_from_args
from dicom_service.training.cli_video import add_video_eval_parser


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to the CLI's subparsers."""
    evaluate = sub.add_parser("eval", help="measure models on a held-out split")
    kinds = evaluate.add_subparsers(dest="kind", required=True,
                                    metavar="{implants,implants-ablation,video,stabilisation}")
    add_video_eval_parser(kinds)
    for kind, text in (("implants", "a trained implant bundle on a COCO split"),
                       ("implants-ablation", "train and measure seed 002's variants")):
        _add_implant_eval(kinds.add_parser(kind, help=text))


def _add_implant_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coco", required=True, type=Path, help="annotations.json with a 'split' per image")
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the bundled models/implants)")
    p.add_argument("--split", default="test", help="split to measure (default: test)")
    p.add_argument("--out", type=Path, default=None, help="folder for JSON, Markdown and PNG figures")
    p.add_argument("--limit", type=int, default=None, help="first N images of the split")
    p.add_argument("--variants", default=None,
                   help="implants-ablation: comma-separated subset of "
                        "random,mae,mde,mde-mask45,mde-mask65,mde-one-stage (default: all)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="implants-ablation: combine these ablation.json files (runs of other --variants) instead "
                        "of training")
    add_training_options(p)
    p.set_defaults(func=cmd_eval)


def metrics_table(report: dict[str, Any]) -> str:
    """A plain-text table of an ``eval implants`` report; an undefined metric (None) reads ``n/a``."""
    lines = [f"split {report['split']}: {report['images']} images, {report['ms_per_image']} ms/image "
             f"on {report['device']}"]
    op = report["operating_point"]
    if op["true_positives"] + op["false_negatives"] == 0:
        lines.append("no annotated implant in this split: AP, recall and system accuracy are undefined (n/a)")
    lines += ["", f"{'metric':<34}{'value':>10}"]

    def add(name: str, value: Any) -> None:
        if value is None:
            value = "n/a"
        lines.append(f"{name:<34}{value:>10.3f}" if isinstance(value, float) else f"{name:<34}{value!s:>10}")

    for key in ("ap", "ap50", "ap75"):
        add(f"implant {key.upper()}", report["implants"][key])
    for key in ("ap", "ap50", "ap75"):
        add(f"part {key.upper()}", report["parts"][key])
    for name, values in report["parts"]["per_class"].items():
        add(f"  {name} AP50", values.get("ap50", float("nan")))
    add(f"precision @ thresholds {op['part_threshold']}/{op['finding_threshold']}", op["precision"])
    add("recall @ thresholds", op["recall"])
    add("false positives per image", op["false_positives_per_image"])
    add("images with a finding", f"{op['images_with_findings']}/{report['images']}")
    add("implant-free images with a finding", f"{op['of_which_with_findings']}/{op['images_without_implants']}")
    systems = report.get("systems")
    if systems:
        add("system top-1 (all implants)", systems["top1"])
        add("system top-3 (all implants)", systems["top3"])
        add("system top-1 (detected implants)", systems["top1_of_matched"])
        add("system top-1 (true boxes)", systems["on_true_boxes"]["top1"])
        add("system top-3 (true boxes)", systems["on_true_boxes"]["top3"])
        if "ece" in systems:
            add("system ECE", systems["ece"])
        add("implants detected / annotated", f"{systems['matched']}/{systems['implants']}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``eval implants`` or ``eval implants-ablation``; 2 on bad arguments or data."""
    from dicom_service.training.coco import load_coco
    from dicom_service.training.train_implants import resolve_device

    try:
        device = resolve_device(args.device)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be >= 1")
        if args.kind == "implants":
            return _eval_bundle(args, str(device))
        return _ablation(args, load_coco(args.coco), device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dicom-service eval: {exc}", file=sys.stderr)
        return 2


def _eval_bundle(args: argparse.Namespace, device: str) -> int:
    from dicom_service.training.evaluate_implants import evaluate_bundle
    from dicom_service.vision.registry import default_models_dir

    model = args.model or default_models_dir() / "implants"
    report = evaluate_bundle(model, args.coco, split=args.split, device=device, out_dir=args.out, limit=args.limit)
    print(metrics_table(report))
    keys = ("implants", "parts", "operating_point", "systems", "ms_per_image")
    print(json.dumps({k: report[k] for k in keys if k in report}))
    return 0


def _ablation(args: argparse.Namespace, coco: Any, device: Any) -> int:
    from dicom_service.training.ablation_implants import VARIANTS, markdown_tables, run_ablation, write_ablation

    if args.merge:
        from dicom_service.training.ablation_implants import merge_results

        merged = merge_results(args.merge)
        if args.out is not None:
            write_ablation(merged, args.out)
        print(markdown_tables(merged))
        return 0
    from dicom_service.training.implant_recipe import check_training_data

    opts = options_from_args(args)
    check_training_data(coco, opts)  # before any variant trains
    variants = VARIANTS
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        known = {v.name: v for v in VARIANTS}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        variants = tuple(known[n] for n in names)

    def log(record: dict[str, Any]) -> None:
        print(json.dumps(record), file=sys.stderr, flush=True)

    result = run_ablation(coco, opts, device, split=args.split, variants=variants, log=log)
    result["argv"] = sys.argv[1:]
    if args.out is not None:
        write_ablation(result, args.out)
    print(markdown_tables(result))
    return 0
