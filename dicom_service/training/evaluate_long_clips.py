"""``eval stabilisation``: the node's stabilisation judged on long phantom clips.

``eval video`` measures stabilisation on its data set's clips, 12 frames long: there a
1 s moving average (15 frames of radius at 30 fps) is cut to 5 frames by the clip and
the ends dominate. Clips the node receives last seconds, so this command renders
held-out phantom clips at the length asked for (10 s at 30 fps by default; clip ``i``
is :func:`~dicom_service.training.video_phantoms.clip_seed` ``(seed, split, i)``, the
same scenes as the data set's clips of that split, filmed for longer), restores them
with the learned runtime as the node does (automatic tooth masks, restoration, no
stabilisation), and judges the stabilisation of the restored frames by the true camera
motion (:func:`~dicom_service.training.evaluate_stabilisation.stabilisation_records`)
for each camera-path smoothing length asked for. Nothing is written to disk but the
report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_service.training.evaluate_stabilisation import stabilisation_records, stabilisation_summary
from dicom_service.training.video_phantoms import GENERATOR_VERSION, clip_seed, render_clip
from dicom_service.vision.stabilisation import DEFAULT_SMOOTHING_SECONDS, smoothing_radius
from dicom_service.vision.video_runtime import LearnedVideoRuntime


def evaluate_long_clips(models_dir: Path, *, clips: int = 24, frames: int = 300, seed: int = 0,
                        split: str = "test", height: int = 240, width: int = 320,
                        smoothing: Sequence[float] = (0.5, DEFAULT_SMOOTHING_SECONDS, 2.0), device: str = "cpu",
                        precision: str = "float32", out_dir: Path | None = None,
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Render, restore and judge the stabilisation of ``clips`` long phantom clips.

    Parameters
    ----------
    models_dir : Path
        Folder with the ``tooth_sam`` and ``video_restoration`` bundles.
    clips, frames : int
        Number of clips (>= 1) and frames per clip (>= 3), ``height x width`` pixels, 30 fps.
    seed, split : int, str
        Clip ``i`` is rendered from ``clip_seed(seed, split, i)``.
    smoothing : sequence of float
        Camera-path moving-average lengths in seconds (each > 0); the node's default is
        :data:`~dicom_service.vision.stabilisation.DEFAULT_SMOOTHING_SECONDS`.
    device, precision : str
        Where and in what precision the restoration runs (float32 by default, as ``eval video``).
    out_dir : Path, optional
        Writes ``eval_stabilisation.json`` and ``eval_stabilisation.txt`` there.
    log : callable, optional
        Receives one line per clip.

    Returns
    -------
    dict
        ``clips``, ``frames``, ``size`` ``[width, height]``, ``fps``, ``generator``, ``seeds``,
        ``algorithm``, ``seconds``; ``by_smoothing``: per smoothing length (key ``"1.0s"``)
        its ``radius_frames`` and the mean over clips of each field of
        :func:`~dicom_service.training.evaluate_stabilisation.stabilisation_records`; ``per_clip``.

    Raises
    ------
    ValueError
        ``clips < 1``, ``frames < 3``, a smoothing length <= 0, an unknown split, or a
        precision the device cannot run.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if frames < 3:
        raise ValueError(f"frames must be >= 3 to measure shake, got {frames}")
    if not smoothing or any(not s > 0 for s in smoothing):
        raise ValueError(f"smoothing lengths must be > 0 seconds, got {list(smoothing)}")
    seeds = [clip_seed(seed, split, index) for index in range(clips)]
    runtime = LearnedVideoRuntime(models_dir, device, stabilise=False, precision=precision)
    fps = 30.0
    radii = [smoothing_radius(fps, frames, s) for s in smoothing]
    started = time.perf_counter()
    per_clip: list[dict[str, Any]] = []
    for index, clip_seed_value in enumerate(seeds):
        clip = render_clip(clip_seed_value, frames=frames, height=height, width=width, fps=fps)
        restored = runtime.enhance(clip.degraded, clip.fps).frames
        records = stabilisation_records(clip, restored, radii)
        if records is None:  # pragma: no cover - phantom clips of >= 3 frames always have true flow
            raise ValueError(f"clip {clip_seed_value} has no true flow")
        per_clip.append({"seed": clip_seed_value,
                         "by_smoothing": {_key(s): r for s, r in zip(smoothing, records, strict=True)}})
        if log is not None:
            shown = ", ".join(f"{_key(s)} {r['after']:.2f}" for s, r in zip(smoothing, records, strict=True))
            log(f"clip {index + 1}/{clips} seed {clip_seed_value}: shake {records[0]['before']:.2f} px/frame^2, "
                f"stabilised {shown}")
    report: dict[str, Any] = {
        "clips": clips, "frames": frames, "size": [width, height], "fps": fps, "generator": GENERATOR_VERSION,
        "split": split, "seeds": seeds, "device": device, "precision": precision,
        "algorithm": runtime.info.version, "seconds": time.perf_counter() - started,
        "by_smoothing": {
            _key(s): {"radius_frames": radius,
                      **(stabilisation_summary([c["by_smoothing"][_key(s)] for c in per_clip]) or {})}
            for s, radius in zip(smoothing, radii, strict=True)},
        "per_clip": per_clip,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval_stabilisation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out_dir / "eval_stabilisation.txt").write_text(stabilisation_table(report) + "\n", encoding="utf-8")
    return report


def _key(seconds: float) -> str:
    """Report key of a smoothing length: ``1.0`` → ``"1.0s"``."""
    return f"{float(seconds)}s"


def stabilisation_table(report: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate_long_clips` report (one row per smoothing length)."""
    width, height = report["size"]
    lines = [f"{report['clips']} clips x {report['frames']} frames {width}x{height} at {report['fps']:g} fps "
             f"({report['split']} seeds, generator {report['generator']}), restored on {report['device']} "
             f"in {report['precision']}",
             "true shake, RMS second difference of tracked scene points, px/frame^2",
             "",
             f"{'smoothing':<12}{'radius':>7}{'before':>9}{'after':>9}{'clean':>9}{'true':>9}{'motion err px':>15}"
             f"{'border % mean/max':>19}"]
    for key, row in report["by_smoothing"].items():
        border = f"{100 * row['border_fraction']:.1f} / {100 * row['border_fraction_max']:.1f}"
        lines.append(f"{key:<12}{row['radius_frames']:>7d}{row['before']:>9.3f}{row['after']:>9.3f}"
                     f"{row['after_clean']:>9.3f}{row['after_true']:>9.3f}{row['motion_error_px']:>15.3f}{border:>19}")
    lines += ["", "after: motion estimated from the restored frames (what the node does); clean: from the clean "
              "frames; true: the true motion (what the moving average itself leaves); border: share of the "
              "stabilised frame filled by the replicated border (mean over frames / worst frame, clip means)"]
    return "\n".join(lines)

