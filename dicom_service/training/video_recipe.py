"""``train video``: the tooth SAM and the two restoration models, trained and bundled.

Three bundles are written under the models folder:

``tooth_sam/``
    The ``tiny`` SAM-architecture model (seed 000's interactive segmentation module),
    trained on degraded frames with simulated boxes and clicks and a prompt-free mode.
``video_restoration/``
    The full restoration model (tooth prior + motion), used by the ``learned`` runtime.
``video_restoration_noprior/``
    The same model without the tooth prior (seed 000's ablation), for ``eval video``.
``video_sr2/``, ``video_interp2/``
    The interframe models (x2 super-resolution, x2 frame interpolation), trained on the
    clean frames.

Data: a phantom data set written by ``dicom-service phantoms video`` (``--data``), or
real paired clips laid out as ``ROOT/<clip>/{LQ,HQ,masks}`` (``--paired``; every fifth
clip, at least one, held out: :func:`held_out`). Real clips without masks get tooth masks
from a SAM bundle (automatic mode) for the prior: the one in the models folder, else the
repository's (chosen by ``train video`` before training).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_service.training.train_restoration import RestorationTrainOptions, mean_psnr, train_restoration
from dicom_service.training.video_dataset import list_paired_root, list_split, load_clip, load_paired_folder
from dicom_service.training.video_phantoms import VideoClip
from dicom_service.vision.bundle_names import INTERP_BUNDLE, SAM_BUNDLE, SR_BUNDLE
from dicom_service.vision.restoration_model import load_restoration_bundle, save_restoration_bundle
from dicom_service.vision.restoration_net import RestorationConfig, grow

PARTS = ("sam", "restoration", "noprior", "sr2", "interp2")
#: What a resumed restoration bundle keeps of each earlier run in its ``"runs"`` list.
RUN_KEYS = ("command", "options", "val_psnr_db", "training_seconds")
Log = Callable[[dict[str, Any]], None]


def held_out(count: int) -> list[int]:
    """Indices of the held-out clips among ``count`` sorted real clips: every fifth, at least one.

    Raises
    ------
    ValueError
        Fewer than two clips: none could be held out without training on it.
    """
    if count < 2:
        raise ValueError(f"{count} paired clip(s): at least 2 are needed, as one is held out for "
                         "validation and test (every fifth clip, at least one) and never trained on")
    return [i for i in range(count) if i % 5 == 4] or [count - 1]


def load_training_clips(data: Path | None, paired: Path | None, split: str) -> list[VideoClip]:
    """Clips of one split of a phantom data set, or of the real paired clips.

    Real paired data has no split of its own: ``val`` and ``test`` take every fifth clip
    (sorted by folder name; the last one when there are fewer than five) and ``train``
    takes the others, so no held-out clip is trained on.

    Raises
    ------
    ValueError
        Neither or both sources given, an unknown split, fewer than two paired clips, or
        a clip folder that cannot be read (named).
    """
    if data is not None and paired is None:
        return [load_clip(path) for path in list_split(data, split)]
    if data is not None or paired is None:
        raise ValueError("give exactly one of --data (phantom data set) or --paired (real paired clips)")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val or test")
    folders = list_paired_root(paired)
    if not folders:
        raise ValueError(f"{paired}: no clip folders with LQ/ and HQ/")
    try:
        held = held_out(len(folders))
    except ValueError as exc:
        raise ValueError(f"{paired}: {exc}") from exc
    chosen = [f for i, f in enumerate(folders) if (i in held) == (split != "train")]
    return [load_paired_folder(f) for f in chosen]


def with_masks(clips: Sequence[VideoClip], masker: Callable[[np.ndarray], np.ndarray]) -> list[VideoClip]:
    """Fill missing tooth masks with ``masker(degraded (T, H, W, 3)) -> (T, H, W) bool``."""
    return [c if c.masks is not None else dataclasses.replace(c, masks=masker(c.degraded)) for c in clips]


def train_sam_bundle(train: Sequence[VideoClip], val: Sequence[VideoClip], out: Path, *, steps: int,
                     batch_size: int, lr: float, seed: int, device: str, facts: dict[str, Any], log: Log
                     ) -> dict[str, Any]:
    """Train the tiny tooth SAM, measure it on ``val`` and write ``out/tooth_sam``."""
    from dicom_service.training.train_sam import evaluate_tooth_sam, frames_from_clips, train_tooth_sam
    from dicom_service.vision.tooth_sam import save_sam_bundle

    if any(c.masks is None for c in train):
        raise ValueError("training the tooth SAM needs tooth masks for every training clip")
    started = time.perf_counter()
    model = train_tooth_sam(frames_from_clips(train), steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                            device=device, log=lambda line: log({"stage": "sam", "progress": line}))
    seconds = time.perf_counter() - started
    metrics = evaluate_tooth_sam(model, [c for c in val if c.masks is not None], device)
    save_sam_bundle(model.cpu(), "tiny", out / SAM_BUNDLE,
                    {**facts, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "training_seconds": round(seconds, 1), "val": metrics})
    log({"stage": "sam", "seconds": round(seconds, 1), "val": metrics})
    return metrics


def train_restoration_bundle(train: Sequence[VideoClip], val: Sequence[VideoClip], folder: Path, *,
                             use_prior: bool, width: int, opts: RestorationTrainOptions, device: str,
                             facts: dict[str, Any], log: Log, resume: bool = False,
                             refine: bool = False, bidirectional: bool = False,
                             prior_from: Path | None = None) -> dict[str, Any]:
    """Train one restoration model, measure its val PSNR (true masks) and bundle it.

    With ``resume`` the bundle already in ``folder`` is trained on (same architecture;
    ``refine`` / ``bidirectional`` grow the full-resolution refinement / the next-frame
    fusion onto a bundle without them, see
    :func:`~dicom_service.vision.restoration_net.grow`); its earlier runs are
    kept in the new ``config.json`` under ``"runs"``, oldest first, and
    ``training_seconds`` becomes the total (each entry of ``"runs"`` keeps the total as
    it stood after that run). With ``prior_from`` (a model with the prior
    only) the run starts instead from the no-prior bundle in that folder with the tooth
    prior grown onto it, so it starts as the same function as that model and whatever
    it gains over it comes from the prior; the no-prior bundle's runs become the history.
    """
    config = RestorationConfig(width=width, use_prior=use_prior, refine=refine, bidirectional=bidirectional)
    stage = "restoration" if use_prior else "noprior"
    if not use_prior:  # no mask to drop: recorded as 0 so the bundle says what its training did
        opts = dataclasses.replace(opts, mask_dropout=0.0)
    initial, earlier, before = None, [], 0.0
    if prior_from is not None and not use_prior:
        raise ValueError("prior_from grows the prior: only the model with the prior starts from it")
    if prior_from is not None:
        initial, previous = load_restoration_bundle(prior_from, device)
        if initial.config.use_prior:
            raise ValueError(f"--prior-from-noprior: {prior_from} already holds a model with the prior")
        initial = grow(initial, prior=True)
        log({"stage": stage, "grown": f"tooth prior onto {prior_from} (starts as the same function)"})
    elif resume:
        initial, previous = load_restoration_bundle(folder, device)
    if initial is not None:
        missing = {name: True for name in ("refine", "bidirectional")
                   if getattr(config, name) and not getattr(initial.config, name)}
        if missing and initial.config == dataclasses.replace(config, **{name: False for name in missing}):
            initial = grow(initial, **missing)
            log({"stage": stage, "grown": f"{', '.join(missing)} (zero-started)"})
        if initial.config != config:
            raise ValueError(f"{prior_from or folder} holds {initial.config}, not {config} "
                             "(check --width, --refine, --bidirectional)")
        earlier = [*previous.get("runs", []), {k: previous.get(k) for k in RUN_KEYS}]
        before = previous.get("training_seconds") or 0.0  # already the total of its runs so far
    started = time.perf_counter()
    model = train_restoration(config, train, opts, device, log_fn=lambda r: log({"stage": stage, **r}),
                              initial=initial)
    seconds = time.perf_counter() - started
    val_psnr = mean_psnr(model, val, device)
    metrics = {"val_psnr_db": round(val_psnr, 3),
               "training_seconds": round(seconds + before, 1)}
    run = {**facts, "options": dataclasses.asdict(opts), **metrics}
    if earlier:
        run = {**run, "runs": earlier, "training_seconds_this_run": round(seconds, 1)}
    save_restoration_bundle(model.cpu(), folder, run)
    log({"stage": stage, **metrics})
    return metrics


def train_interframe_bundle(kind: str, train: Sequence[VideoClip], val: Sequence[VideoClip], out: Path, *,
                            steps: int, crop: int, seed: int, device: str, facts: dict[str, Any], log: Log
                            ) -> dict[str, Any]:
    """Train ``sr2`` (input crops ``crop``) or ``interp2`` (crops ``2 crop``), measure it on
    ``val`` and write ``out/video_<kind>``."""
    from dicom_service.training.train_interframe import evaluate_interframe, train_interpolator, train_super_resolution
    from dicom_service.vision.interframe import save_interframe_bundle

    started = time.perf_counter()
    if kind == "sr2":
        model = train_super_resolution(train, steps=steps, crop=crop, seed=seed, device=device, log=log)
        metrics = evaluate_interframe(model, None, val, device)
    else:
        model = train_interpolator(train, steps=steps, crop=2 * crop, seed=seed, device=device, log=log)
        metrics = evaluate_interframe(None, model, val, device)
    seconds = time.perf_counter() - started
    facts = {**facts, "steps": steps, "crop": crop, "seed": seed, "training_seconds": round(seconds, 1), "val": metrics}
    save_interframe_bundle(model.cpu(), out / (SR_BUNDLE if kind == "sr2" else INTERP_BUNDLE), facts)
    log({"stage": kind, "seconds": round(seconds, 1), "val": metrics})
    return metrics
