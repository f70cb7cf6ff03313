"""``eval video``: restoration, segmentation, flow and speed on a held-out split.

Restoration is compared on the same clips, each output against the clean frames:

``degraded``            the input itself;
``classical``           the OpenCV baseline (bilateral + motion-guarded temporal
                        averaging with DIS flow + CLAHE + unsharp), stabilisation off
                        (stabilising moves frames away from the unstabilised reference);
``no_prior``            the restoration model trained without the tooth prior;
``full_auto``           the full model with automatic SAM masks (what the node runs);
``full_auto_every_2``   the same with SAM run on every second frame only and its masks
                        carried by flow to the frames between (``models.segment_every: 2``);
``full_box``, ``full_clicks_1/3/5``  the full model with masks from a box or 1/3/5
                        simulated clicks (seed 000's prompt ablation carried into the
                        restoration);
``full_true_mask``      the full model with the true masks (upper bound of the prior);
``full_no_flow``        the full model, automatic masks, the neighbouring frames'
                        features (previous; next too for a bidirectional model) not
                        aligned by flow (the motion ablation);
``full_no_next``        the full model, automatic masks, the next frame not used (the
                        current frame's features stand in for it, as on a clip's last
                        frame): what the bidirectional fusion adds. For a model without
                        it this is ``full_auto``;
``full_empty_mask``     the full model told that no pixel is tooth (what a missed
                        segmentation costs).

PSNR is averaged per clip (over all its frames); ``psnr_teeth`` is measured on the true
tooth pixels only. ``by_scene`` splits the clips into those with teeth in view and those
without (mucosa only, where no known colour tells the exposure), and gives for each
``psnr_gain_corrected``: the PSNR left once each clip's output is multiplied by the
channel gains that best fit the clean clip (:func:`gain_corrected`, a diagnostic: the
gap to ``psnr`` is the share of the error that is global colour / exposure).
For phantom clips, whose degradation is known, ``by_defocus`` and ``by_jpeg_quality``
group them by the defocus disc radius and the JPEG quality they were rendered with, and
``per_clip`` lists each clip's facts and metrics (where the SSIM gap lives).
``grain_free_reference`` (phantom clips only): the clean frames rendered again without the
scene's per-pixel grain (:func:`~dicom_service.training.video_phantoms.grain_free_clean`),
scored against the clean frames. The grain is white noise that blur, sensor noise and JPEG
wipe out of every frame, so this is what a restoration that recovers everything else
scores: the practical ceiling of single-frame restoration on these phantoms, for SSIM
above all (grain is most of the local variance of the flat mucosa). It also gives
``full_auto`` scored against the grain-free frames (how close the model is to that ceiling
image).
Segmentation: mIoU against the true masks of the automatic masks, of SAM prompted by a
box or 1/3/5 simulated clicks, and of the automatic masks on keyframes only
(``automatic_every_N``: SAM on every N-th frame, :func:`keyframe_masks`).
Propagation: the true mask of frame 0 (a perfect correction) carried through the clip
(:func:`propagate_correction`), mIoU on the other frames. Flow: DIS end-point error
against the true phantom flow, on pixels whose target stays inside the frame.
Stabilisation (clips with true flow): the true high-frequency camera motion before and
after the node's stabilisation of the ``full_auto`` frames (see
:mod:`~dicom_service.training.evaluate_stabilisation`).
Interframe models (when bundled): see
:func:`~dicom_service.training.train_interframe.evaluate_interframe`.
In ``eval_video.json`` a metric that does not apply (NaN in the report: frame
interpolation of 1- or 2-frame clips, tooth PSNR without teeth) is ``null``, so the file
is strict JSON (:func:`strict_json`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from dicom_service.json_values import finite_json
from dicom_service.training.evaluate_stabilisation import stabilisation_record, stabilisation_summary
from dicom_service.training.image_metrics import gain_corrected, mask_iou, psnr, ssim
from dicom_service.training.train_interframe import evaluate_interframe
from dicom_service.training.train_sam import PROMPT_MODES, prompted_masks, segmentation_report
from dicom_service.training.video_phantoms import VideoClip, clip_degradation, grain_free_clean
from dicom_service.vision.baseline_video import ClassicalVideoRuntime
from dicom_service.vision.bundle_names import INTERP_BUNDLE, NOPRIOR_BUNDLE, SR_BUNDLE
from dicom_service.vision.interframe import load_interframe_bundle
from dicom_service.vision.mask_propagation import keyframe_masks, propagate_correction
from dicom_service.vision.optical_flow import DisFlow, clip_flows, endpoint_error, lands_inside
from dicom_service.vision.precision import for_inference, precision_name
from dicom_service.vision.restoration_model import load_restoration_bundle, restore_clip
from dicom_service.vision.stabilisation import smoothing_radius
from dicom_service.vision.tooth_predictor import ToothSegmenter
from dicom_service.vision.video_runtime import LearnedVideoRuntime, automatic_masks

#: ``models.segment_every`` values measured besides 1: the tooth model on every n-th frame,
#: masks carried by flow between (mIoU ``automatic_every_N``; restoration ``full_auto_every_2``).
KEYFRAME_STEPS = (2, 4)
METHODS = ("degraded", "classical", "no_prior", "full_auto", "full_auto_every_2", "full_box", "full_clicks_1",
           "full_clicks_3", "full_clicks_5", "full_true_mask", "full_no_flow", "full_no_next", "full_empty_mask")
SHEET_COLUMNS = ("degraded", "classical", "no_prior", "full_auto", "clean")
#: Methods broken down by clip kind (:data:`BREAKDOWNS`) and listed per clip.
SCENE_METHODS = ("degraded", "classical", "no_prior", "full_auto")
ClipRecord = dict[str, Any]
#: Clip groupings of the report: ``{breakdown: {kind: predicate on a clip record}}``.
#: ``by_scene`` holds for every clip; the degradation groupings only for phantom clips
#: whose parameters are known (:func:`~dicom_service.training.video_phantoms.clip_degradation`).
BREAKDOWNS: dict[str, dict[str, Callable[[ClipRecord], bool]]] = {
    "by_scene": {"with_teeth": lambda r: r["teeth"], "without_teeth": lambda r: not r["teeth"]},
    "by_defocus": {"sharp": lambda r: r["defocus_px"] == 0.0,
                   "defocus_under_1.4px": lambda r: 0.0 < r["defocus_px"] < 1.4,
                   "defocus_1.4px_and_over": lambda r: r["defocus_px"] >= 1.4},
    "by_jpeg_quality": {"quality_under_50": lambda r: r["jpeg_quality"] < 50,
                        "quality_50_and_over": lambda r: r["jpeg_quality"] >= 50},
}


def breakdown(records: Sequence[ClipRecord], groups: dict[str, Callable[[ClipRecord], bool]]
              ) -> dict[str, dict[str, Any]]:
    """Mean metrics per clip kind.

    Parameters
    ----------
    records : sequence of dict
        One per clip: the fields the predicates read (``teeth``, ``defocus_px``,
        ``jpeg_quality``) and ``{method: {"psnr", "ssim", "psnr_gain_corrected"}}`` for
        the methods of :data:`SCENE_METHODS`.
    groups : dict
        ``{kind: predicate}``, e.g. one of :data:`BREAKDOWNS`.

    Returns
    -------
    dict
        ``{kind: {"clips": n, method: {metric: mean}}}``; a kind without clips has
        ``clips`` 0 and no methods.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind, chosen_by in groups.items():
        chosen = [r for r in records if chosen_by(r)]
        entry: dict[str, Any] = {"clips": len(chosen)}
        if chosen:
            for method in SCENE_METHODS:
                entry[method] = {k: float(np.mean([r[method][k] for r in chosen])) for k in chosen[0][method]}
        out[kind] = entry
    return out


def clip_record(clip: VideoClip, teeth: bool) -> ClipRecord:
    """The facts of a clip the breakdowns group by: name, teeth in view and, for a
    phantom clip, its degradation (``defocus_px``, ``exposure``, ``jpeg_quality``; None otherwise)."""
    params = clip_degradation(clip)
    return {"name": clip.name, "teeth": teeth,
            "defocus_px": None if params is None else params.defocus,
            "exposure": None if params is None else params.exposure,
            "jpeg_quality": None if params is None else params.quality}


def breakdowns(records: Sequence[ClipRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every grouping of :data:`BREAKDOWNS` that applies: the degradation ones only when
    every clip's degradation is known."""
    known = all(r["defocus_px"] is not None for r in records)
    return {name: breakdown(records, groups) for name, groups in BREAKDOWNS.items() if name == "by_scene" or known}


def interactive_masks(segmenter: ToothSegmenter, frames: np.ndarray, truth: np.ndarray,
                      clicks: Sequence[int]) -> dict[str, np.ndarray]:
    """Masks from a box and from ``n`` simulated clicks, frame by frame.

    See :func:`~dicom_service.training.train_sam.prompted_masks`. Frames with an empty
    true mask get an empty mask (nobody clicks where there are no teeth).

    Returns
    -------
    dict
        ``"box"`` and ``"clicks_<n>"`` → ``(T, H, W)`` bool.
    """
    keys = ["box"] + [f"clicks_{n}" for n in clicks]
    out = {k: np.zeros(truth.shape, dtype=bool) for k in keys}
    for t, (frame, gt) in enumerate(zip(frames, truth, strict=True)):
        if gt.any():
            segmenter.set_image(frame)
            for key, mask in prompted_masks(segmenter, gt, clicks).items():
                out[key][t] = mask
    return out


def _flow_epe(clip: VideoClip, dis: DisFlow) -> dict[str, float]:
    """DIS EPE against the true forward flow, on degraded and on clean frames."""
    if clip.flow is None or clip.clean.shape[0] < 2:
        return {}
    result: dict[str, list[float]] = {"degraded": [], "clean": []}
    for t in range(clip.clean.shape[0] - 1):
        true = clip.flow[t]
        valid = lands_inside(true)
        for key, frames in (("degraded", clip.degraded), ("clean", clip.clean)):
            result[key].append(endpoint_error(dis(frames[t], frames[t + 1]), true, valid))
    return {k: float(np.nanmean(v)) for k, v in result.items()}


@contextmanager
def _timed(seconds: dict[str, float], key: str, frames: int) -> Iterator[None]:
    """Add the block's wall time to ``seconds[key]`` and ``frames`` to ``seconds[key_frames]``."""
    started = time.perf_counter()
    yield
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started
    seconds[f"{key}_frames"] = seconds.get(f"{key}_frames", 0.0) + frames


def paired_gain(a: Sequence[float], b: Sequence[float], resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Per-clip gain of method ``a`` over method ``b`` on the same clips.

    Parameters
    ----------
    a, b : sequence of float
        One value per clip, in the same clip order; pairs with a NaN (e.g. tooth PSNR of
        a clip without teeth) are left out.
    resamples : int
        Bootstrap resamples of the clips for the interval.
    seed : int

    Returns
    -------
    dict
        ``clips`` (pairs used), ``mean`` (mean of ``a - b``), ``ci95`` (``[low, high]``,
        percentile bootstrap over clips; None below two clips) and ``wins`` (clips where
        ``a > b``).
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return {"clips": 0, "mean": None, "ci95": None, "wins": 0}
    interval = None
    if diff.size > 1:
        means = diff[np.random.default_rng(seed).integers(0, diff.size, (resamples, diff.size))].mean(axis=1)
        interval = [float(v) for v in np.percentile(means, [2.5, 97.5])]
    return {"clips": int(diff.size), "mean": float(diff.mean()), "ci95": interval, "wins": int((diff > 0).sum())}


def _finite_mean(values: list[float]) -> float | None:
    """Mean of the finite ``values`` (a metric that does not apply to a clip is NaN there);
    None when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _gain(value: float | None, reference: float | None) -> float | None:
    """``value - reference``, or None where either is missing (no clip with teeth, say)."""
    return None if value is None or reference is None else value - reference


def strict_json(value: Any) -> Any:
    """``value`` (nested dicts, lists, numbers) with each NaN or infinite float replaced by None.

    Strict JSON has no NaN; ``json.dumps(strict_json(report), allow_nan=False)`` then cannot fail on one.
    """
    return finite_json(value, lambda _: None)


def evaluate_video(clips: Sequence[VideoClip], models_dir: Path, *, device: str = "cpu",
                   out_dir: Path | None = None, precision: str = "float32") -> dict[str, Any]:
    """Measure every method on ``clips``; write ``eval_video.json``, ``eval_video.txt`` (the
    table of :func:`metrics_table`) and ``contact_sheet.png`` into ``out_dir`` when given.

    ``precision`` is the restoration networks' compute precision
    (:func:`~dicom_service.vision.precision.inference_dtype`); float32 by default, so the
    figures do not depend on the machine's bfloat16 support.

    Raises
    ------
    ValueError
        No clip, or a clip without masks, or a precision the device cannot run.
    """
    if not clips:
        raise ValueError("no clips to evaluate")
    if any(c.masks is None for c in clips):
        raise ValueError("eval video needs true tooth masks for every clip")
    runtime = LearnedVideoRuntime(models_dir, device, stabilise=True, precision=precision)
    full, segmenter, dtype = runtime.restorer, runtime.segmenter, runtime.dtype
    no_prior = for_inference(load_restoration_bundle(models_dir / NOPRIOR_BUNDLE, device)[0])
    classical = ClassicalVideoRuntime(stabilise=False)
    dis = DisFlow()
    per_method: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": [], "psnr_teeth": []} for m in METHODS}
    epe: dict[str, list[float]] = {"degraded": [], "clean": []}
    seconds: dict[str, float] = {}
    propagation: list[float] = []
    truths: list[np.ndarray] = []
    automatic: list[np.ndarray] = []
    prompted_all: dict[str, list[np.ndarray]] = {k: [] for k in (*PROMPT_MODES, *(f"automatic_every_{n}"
                                                                                 for n in KEYFRAME_STEPS))}
    sheet_rows = []
    records: list[ClipRecord] = []
    for index, clip in enumerate(clips):
        frames, truth, count = clip.degraded, np.asarray(clip.masks, dtype=bool), clip.degraded.shape[0]
        with _timed(seconds, "flow", count):
            flows = clip_flows(frames, dis)
            bidirectional = full.config.bidirectional or no_prior.config.bidirectional
            following = clip_flows(frames, dis, step=1) if bidirectional else None
        with _timed(seconds, "segment", count):
            auto = automatic_masks(segmenter, frames)
        with _timed(seconds, "prompted", count):
            prompted = interactive_masks(segmenter, frames, truth, (1, 3, 5))
        keyframed = {f"automatic_every_{n}": keyframe_masks(segmenter, frames, n, dis, automatic=auto, back_flows=flows)
                     for n in KEYFRAME_STEPS}
        truths.extend(truth)
        automatic.extend(auto)
        for key, masks in (prompted | keyframed).items():
            prompted_all[key].extend(masks)
        with _timed(seconds, "classical", count):
            classical_frames = classical.enhance(frames, clip.fps).frames
        with _timed(seconds, "restore", count):
            full_auto = restore_clip(full, frames, auto, flows, device, dtype, next_flows=following)
        # the neighbours' features taken as they are (zero flow) for the motion ablation
        unaligned = None if following is None else [None if f is None else np.zeros_like(f) for f in following]
        outputs = {
            "degraded": frames,
            "classical": classical_frames,
            "no_prior": restore_clip(no_prior, frames, None, flows, device, dtype, next_flows=following),
            "full_auto": full_auto,
            "full_auto_every_2": restore_clip(full, frames, keyframed["automatic_every_2"], flows, device, dtype,
                                              next_flows=following),
            "full_true_mask": restore_clip(full, frames, truth, flows, device, dtype, next_flows=following),
            "full_no_flow": restore_clip(full, frames, auto, None, device, dtype, next_flows=unaligned),
            "full_no_next": (restore_clip(full, frames, auto, flows, device, dtype) if full.config.bidirectional
                             else full_auto),
            "full_empty_mask": restore_clip(full, frames, np.zeros_like(truth), flows, device, dtype,
                                            next_flows=following),
        }
        for key, masks in prompted.items():
            outputs[f"full_{key}"] = restore_clip(full, frames, masks, flows, device, dtype, next_flows=following)
        record = clip_record(clip, bool(truth.any()))
        for method, result in outputs.items():
            values = {"psnr": psnr(result, clip.clean), "ssim": ssim(result, clip.clean),
                      "psnr_teeth": psnr(result, clip.clean, truth)}
            for key, value in values.items():
                per_method[method][key].append(value)
            if method in SCENE_METHODS:
                record[method] = {"psnr": values["psnr"], "ssim": values["ssim"],
                                 "psnr_gain_corrected": psnr(gain_corrected(result, clip.clean), clip.clean)}
        grain_free = grain_free_clean(clip)
        if grain_free is not None:
            record["grain_free_reference"] = {"psnr": psnr(grain_free, clip.clean),
                                              "ssim": ssim(grain_free, clip.clean),
                                              "full_auto_ssim_to_it": ssim(full_auto, grain_free)}
        record["stabilisation"] = stabilisation_record(
            clip, full_auto, smoothing_radius(clip.fps, count, runtime.smoothing_seconds))
        records.append(record)
        if truth[0].any():  # a perfect correction on frame 0, carried through the clip
            carried = propagate_correction(segmenter, frames, 0, truth[0], flow=dis)
            propagation.extend(mask_iou(carried[t], truth[t]) for t in range(1, count))
        for key, value in _flow_epe(clip, dis).items():
            epe[key].append(value)
        if index < 4:
            middle = count // 2
            sheet_rows.append([outputs[c][middle] if c != "clean" else clip.clean[middle] for c in SHEET_COLUMNS])
    pipeline_started = time.perf_counter()
    for clip in clips:
        runtime.enhance(clip.degraded, clip.fps)
    pipeline_seconds = time.perf_counter() - pipeline_started
    total_frames = sum(c.degraded.shape[0] for c in clips)
    height, width = clips[0].degraded.shape[1:3]
    report: dict[str, Any] = {
        "clips": len(clips), "frames": total_frames, "size": [width, height], "device": device,
        "precision": precision_name(dtype),
        "methods": {m: {k: _finite_mean(v) for k, v in values.items()}
                    for m, values in per_method.items()},
        **breakdowns(records),
        "grain_free_reference": grain_free_summary(records),
        "per_clip": records,
        "segmentation": segmentation_report(truths, automatic, prompted_all,
                                            seconds["segment"] + seconds["prompted"]),
        "propagation_miou": float(np.mean(propagation)) if propagation else None,
        "stabilisation": stabilisation_summary([r["stabilisation"] for r in records]),
        "flow_epe_px": {k: float(np.mean(v)) if v else None for k, v in epe.items()},
        "fps": {
            "restoration": seconds["restore_frames"] / seconds["restore"],
            "segmentation_automatic": seconds["segment_frames"] / seconds["segment"],
            "dis_flow": seconds["flow_frames"] / seconds["flow"],
            "classical": seconds["classical_frames"] / seconds["classical"],
            "learned_pipeline": total_frames / pipeline_seconds,
        },
        "threads": torch.get_num_threads(),
        "sam_bundle_sha256": runtime.configs["sam"]["weights"]["sha256"],
    }
    interframe = [load_interframe_bundle(models_dir / name, device)[0] if (models_dir / name / "config.json").is_file()
                  else None for name in (SR_BUNDLE, INTERP_BUNDLE)]
    if any(m is not None for m in interframe):
        report["interframe"] = evaluate_interframe(interframe[0], interframe[1], clips, device)
    methods = report["methods"]
    report["gains_db"] = {
        "full_vs_degraded": _gain(methods["full_auto"]["psnr"], methods["degraded"]["psnr"]),
        "full_vs_classical": _gain(methods["full_auto"]["psnr"], methods["classical"]["psnr"]),
        "full_vs_no_prior": _gain(methods["full_auto"]["psnr"], methods["no_prior"]["psnr"]),
        "full_vs_no_prior_teeth": _gain(methods["full_auto"]["psnr_teeth"], methods["no_prior"]["psnr_teeth"]),
    }
    # the prior ablation clip by clip: the same clips, so the comparison is paired
    report["prior_effect"] = {key: paired_gain(per_method["full_auto"][key], per_method["no_prior"][key])
                              for key in ("psnr", "psnr_teeth", "ssim")}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval_video.json").write_text(json.dumps(strict_json(report), indent=2, allow_nan=False) + "\n",
                                                 encoding="utf-8")
        (out_dir / "eval_video.txt").write_text(metrics_table(report) + "\n", encoding="utf-8")
        write_contact_sheet(sheet_rows, SHEET_COLUMNS, out_dir / "contact_sheet.png")
    return report


def grain_free_summary(records: Sequence[ClipRecord]) -> dict[str, Any] | None:
    """Means of the per-clip ``grain_free_reference`` entries, or None unless every clip has one.

    Returns
    -------
    dict or None
        ``{"clips", "psnr", "ssim", "full_auto_ssim_to_it", "clips_ssim_at_least_0.95"}``:
        the grain-free frames scored against the clean ones (means over clips), ``full_auto``
        scored against the grain-free frames, and how many clips' grain-free frames reach
        SSIM 0.95.
    """
    entries = [r.get("grain_free_reference") for r in records]
    if not entries or any(e is None for e in entries):
        return None
    out: dict[str, Any] = {"clips": len(entries)}
    out.update({k: float(np.mean([e[k] for e in entries])) for k in ("psnr", "ssim", "full_auto_ssim_to_it")})
    out["clips_ssim_at_least_0.95"] = sum(e["ssim"] >= 0.95 for e in entries)
    return out


def write_contact_sheet(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path: Path) -> None:
    """Grid of ``(H, W, 3)`` uint8 RGB frames, one row per clip, titled columns, as PNG."""
    if not rows:
        raise ValueError("no rows for the contact sheet")
    h, w = rows[0][0].shape[:2]
    band = 22
    sheet = np.full((band + h * len(rows), w * len(titles), 3), 255, dtype=np.uint8)
    for c, title in enumerate(titles):
        cv2.putText(sheet, title, (c * w + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet[band + r * h: band + (r + 1) * h, c * w:(c + 1) * w] = image
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "n/a" in the same width where it is None."""
    if value is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "n/a".rjust(int(width or 0))
    return format(value, spec)


def metrics_table(report: dict[str, Any]) -> str:
    """Plain-text table of an ``eval video`` report."""
    lines = [f"{report['clips']} clips, {report['frames']} frames {report['size'][0]}x{report['size'][1]} "
             f"on {report['device']}, {report.get('precision', 'float32')}", "",
             f"{'method':<18}{'PSNR dB':>9}{'SSIM':>8}{'PSNR teeth':>12}"]
    for method, values in report["methods"].items():
        lines.append(f"{method:<18}{_fmt(values['psnr'], '>9.2f')}{_fmt(values['ssim'], '>8.4f')}"
                     f"{_fmt(values['psnr_teeth'], '>12.2f')}")
    for name in BREAKDOWNS:
        for kind, entry in report.get(name, {}).items():
            lines.append(f"{kind.replace('_', ' ')} ({entry['clips']} clips): " + "  ".join(
                f"{m} {entry[m]['psnr']:.2f} dB / {entry[m]['ssim']:.3f} "
                f"(gain-corrected {entry[m]['psnr_gain_corrected']:.2f})"
                for m in SCENE_METHODS if m in entry))
    reference = report.get("grain_free_reference")
    if reference is not None:
        lines.append(f"grain-free clean frames (everything but the per-pixel grain recovered): "
                     f"{reference['psnr']:.2f} dB / SSIM {reference['ssim']:.4f} "
                     f"({reference['clips_ssim_at_least_0.95']}/{reference['clips']} clips >= 0.95); "
                     f"full_auto against them: SSIM {reference['full_auto_ssim_to_it']:.4f}")
    lines.append("")
    for key, value in report["gains_db"].items():
        lines.append(f"gain {key:<28}{_fmt(value, '>+8.2f')} dB")
    for key, gain in report.get("prior_effect", {}).items():
        if gain["ci95"] is not None:
            lines.append(f"prior per clip (full_auto - no_prior) {key}: {gain['mean']:+.4f} "
                         f"[{gain['ci95'][0]:+.4f}, {gain['ci95'][1]:+.4f}] 95% bootstrap, "
                         f"better on {gain['wins']}/{gain['clips']} clips")
    seg = report["segmentation"]
    lines.append("")
    lines.append("mIoU " + "  ".join(f"{k} {v:.3f}" for k, v in seg["miou"].items() if v is not None))
    if seg.get("automatic_false_positive_rate") is not None:
        lines.append(f"automatic masks on frames without teeth: {seg['automatic_false_positive_rate']:.3f} non-empty")
    if report.get("propagation_miou") is not None:
        lines.append(f"correction on frame 0 carried through each clip: mIoU {report['propagation_miou']:.3f}")
    lines.append("flow EPE px (DIS): " + "  ".join(f"{k} {v:.2f}" for k, v in report["flow_epe_px"].items()
                                                  if v is not None))
    stab = report.get("stabilisation")
    if stab is not None:
        lines.append(f"true shake px/frame^2 ({stab['clips']} clips): before {stab['before']:.2f}  "
                     f"after {stab['after']:.2f} (motion from the restored frames; from clean "
                     f"{stab['after_clean']:.2f}, true motion {stab['after_true']:.2f}); "
                     f"motion error {stab['motion_error_px']:.2f} px")
    for kind, values in report.get("interframe", {}).items():
        for label, scores in (("", values), (" stabilised", values.get("stabilised", {}))):
            flat = {k: v for k, v in scores.items() if isinstance(v, float)}
            if flat:
                lines.append(f"{kind}{label}: " + "  ".join(
                    f"{k} {v:.2f} {'px' if k.endswith('_px') else 'dB'}" for k, v in flat.items()))
    lines.append("FPS: " + "  ".join(f"{k} {v:.1f}" for k, v in report["fps"].items()))
    return "\n".join(lines)
