"""Seed 002's ablations on one data set and one budget: initialisation, stages, mask ratio.

Every variant is trained with the same :class:`~dicom_service.training.train_options.TrainOptions`
(epochs, learning rates, seed, images) and evaluated on the same held-out split:

* initialisation (seed 002 Tables 3/4): random vs MAE vs MDE, two-stage;
* one-stage vs two-stage (Table 5): a Mask R-CNN on whole implants vs design parts
  grouped into implants, both from the same MDE encoder, with their speed;
* mask ratio (Table 6): MDE at 25%, 45% and 65%.

The stage-2 identifier does not depend on the encoder, so it is trained once and
shared by the two-stage variants. Pre-trained encoders are shared where two variants
start from the same one (copied before fine-tuning).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dicom_service.training import implant_recipe as recipe
from dicom_service.training.coco import CocoDataset
from dicom_service.training.evaluate_implants import evaluate_one_stage, evaluate_runtime
from dicom_service.training.train_options import Init, TrainOptions
from dicom_service.vision.implant_runtime import LearnedImplantRuntime
from dicom_service.vision.vit import ViTEncoder


@dataclass(frozen=True)
class Variant:
    """One ablation arm: encoder initialisation, MDE/MAE mask ratio, one or two stages."""

    name: str
    init: Init
    mask_ratio: float = 0.25
    stages: int = 2


VARIANTS: tuple[Variant, ...] = (
    Variant("random", "random"),
    Variant("mae", "mae"),
    Variant("mde", "mde"),
    Variant("mde-mask45", "mde", 0.45),
    Variant("mde-mask65", "mde", 0.65),
    Variant("mde-one-stage", "mde", 0.25, stages=1),
)


def _row(variant: Variant, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    systems = report.get("systems", {})
    return {
        "variant": variant.name, "init": variant.init, "mask_ratio": variant.mask_ratio if variant.init != "random"
        else None, "stages": variant.stages, **{f"implant_{k}": v for k, v in report["implants"].items()},
        "part_ap50": report.get("parts", {}).get("ap50"), "system_top1": systems.get("top1"),
        "ms_per_image": report["ms_per_image"], "train_seconds": round(seconds, 1),
    }


def run_ablation(coco: CocoDataset, opts: TrainOptions, device: torch.device, *, split: str = "test",
                 variants: Sequence[Variant] = VARIANTS, log: Callable[[dict[str, Any]], None] | None = None
                 ) -> dict[str, Any]:
    """Train and evaluate every variant; returns ``{"options", "rows", "reports"}``.

    Parameters
    ----------
    opts : TrainOptions
        The shared budget; each variant overrides ``init`` and ``mask_ratio``.
    split : str
        The held-out split every variant is measured on.
    """
    encoders: dict[tuple[str, float], ViTEncoder] = {}
    started = time.perf_counter()
    identifier, _ = recipe.trained_identifier(coco, opts, device, log)
    identifier_seconds = time.perf_counter() - started
    rows, reports = [], {}
    for variant in variants:
        start = time.perf_counter()
        vopts = replace(opts, init=variant.init, mask_ratio=variant.mask_ratio)
        key = (variant.init, variant.mask_ratio if variant.init != "random" else 0.0)
        if key not in encoders:
            encoders[key] = recipe.pretrained_encoder(coco, vopts, device, log)
        encoder = copy.deepcopy(encoders[key])
        if variant.stages == 1:
            detector, _ = recipe.fine_tuned_detector(coco, encoder, vopts, device, log,
                                                     categories=recipe.IMPLANT_CLASSES)
            seconds = time.perf_counter() - start
            report = evaluate_one_stage(detector, opts.img_size, coco, split=split, device=str(device))
        else:
            detector, _ = recipe.fine_tuned_detector(coco, encoder, vopts, device, log)
            seconds = time.perf_counter() - start + identifier_seconds
            config = {"init": variant.init, "vit": {"img_size": opts.img_size}}
            runtime = LearnedImplantRuntime.from_models(detector, identifier, config, str(device))
            report = evaluate_runtime(runtime, coco, split=split)
        reports[variant.name] = report
        rows.append(_row(variant, report, seconds))
        if log is not None:
            log({"stage": "ablation", **rows[-1]})
    return {"options": opts.__dict__, "split": split, "device": str(device), "rows": rows, "reports": reports}


def _fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def markdown_tables(result: dict[str, Any]) -> str:
    """The ablation as three Markdown tables in the shape of seed 002's Tables 3/4, 5 and 6."""
    rows = {r["variant"]: r for r in result["rows"]}
    out = ["Initialisation (two-stage; seed 002 Tables 3/4)", "",
           "| init | implant AP | AP50 | AP75 | part AP50 | system top-1 |", "|---|---|---|---|---|---|"]
    for name in ("random", "mae", "mde"):
        if name in rows:
            r = rows[name]
            out.append(f"| {name.upper() if name != 'random' else 'random'} | {_fmt(r['implant_ap'])} | "
                       f"{_fmt(r['implant_ap50'])} | {_fmt(r['implant_ap75'])} | {_fmt(r['part_ap50'])} | "
                       f"{_fmt(r['system_top1'])} |")
    out += ["", "Stages (MDE encoder; seed 002 Table 5)", "",
            "| model | implant AP | AP50 | AP75 | ms / image | FPS |", "|---|---|---|---|---|---|"]
    for name, label in (("mde-one-stage", "one-stage (implant boxes)"), ("mde", "two-stage (parts → implants)")):
        if name in rows:
            r = rows[name]
            fps = 1000.0 / r["ms_per_image"] if r["ms_per_image"] else None
            out.append(f"| {label} | {_fmt(r['implant_ap'])} | {_fmt(r['implant_ap50'])} | "
                       f"{_fmt(r['implant_ap75'])} | {_fmt(r['ms_per_image'], 1)} | {_fmt(fps, 1)} |")
    out += ["", "MDE mask ratio (two-stage; seed 002 Table 6)", "",
            "| mask ratio | implant AP | AP50 | AP75 |", "|---|---|---|---|"]
    for name in ("mde", "mde-mask45", "mde-mask65"):
        if name in rows:
            r = rows[name]
            out.append(f"| {r['mask_ratio']:.0%} | {_fmt(r['implant_ap'])} | {_fmt(r['implant_ap50'])} | "
                       f"{_fmt(r['implant_ap75'])} |")
    return "\n".join(out) + "\n"


def write_ablation(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``ablation.json`` and ``ablation.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "ablation.json", out_dir / "ablation.md"
    json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    md_path.write_text(markdown_tables(result), encoding="utf-8")
    return json_path, md_path


def merge_results(paths: Sequence[Path]) -> dict[str, Any]:
    """Combine ``ablation.json`` files of runs with the same options but different ``--variants``.

    Every variant is seeded on its own (pre-training, fine-tuning and the identifier
    re-seed from ``opts.seed``), so variants run in separate processes give the rows a
    single run would. Rows come out in :data:`VARIANTS` order; a variant in two files
    is an error, and so are files whose options differ.
    """
    rows: dict[str, dict[str, Any]] = {}
    reports: dict[str, Any] = {}
    options = None
    for path in paths:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if options is not None and doc.get("options") != options:
            raise ValueError(f"{path}: options differ from the first file's")
        options = doc.get("options")
        for row in doc["rows"]:
            if row["variant"] in rows:
                raise ValueError(f"{path}: variant {row['variant']!r} is already in another file")
            rows[row["variant"]] = row
        reports.update(doc.get("reports", {}))
    order = [v.name for v in VARIANTS]
    return {"options": options, "rows": [rows[n] for n in order if n in rows], "reports": reports,
            "merged_from": [str(p) for p in paths]}
