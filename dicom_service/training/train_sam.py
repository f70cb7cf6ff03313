"""Training and evaluation of the interactive tooth SAM (seed 000) on video frames.

The training recipe follows SAM's interactive training, shrunk to two CPU cores. Each
sample is one frame (resized to ``img_size`` on its longest side by the predictor's own
transform) whose image embedding is computed once and reused for one prompt mode:

* **automatic** (~30 %, and always for frames without teeth): no prompt at all; the
  target is the whole teeth region (empty on frames without teeth);
* **box** (~25 %): the ground-truth box with jitter, and in half of these also the
  ground truth shifted / dilated / eroded as ``mask_input`` (what
  :meth:`ToothSegmenter.refine_with_mask` gives after propagating a mask to the next frame);
* **clicks** (~45 %): one interior click, then 0-4 corrective clicks simulated from the
  current error, each iteration fed the previous (detached) low-resolution logits.

Loss per decoded mask: ``20 * focal + dice`` on the logits upsampled to the input size,
plus the MSE between the predicted and the actual IoU. AdamW, linear warm-up then cosine.

Data: a sequence of ``(frame, mask)`` pairs: ``(H, W, 3)`` uint8 RGB degraded frames (what
the node receives) and ``(H, W)`` bool teeth masks. :func:`frames_from_clips` makes it from
video clips with ``degraded`` ``(T, H, W, 3)`` and ``masks`` ``(T, H, W)`` arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from segment_anything.modeling import Sam
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from dicom_service.training.click_simulation import box_from_mask, first_click, next_click
from dicom_service.training.image_metrics import mask_iou
from dicom_service.training.optim import optimiser_step, warmup_cosine
from dicom_service.vision.tooth_predictor import ToothSegmenter, check_frame, decode_masks, mask_logits
from dicom_service.vision.tooth_sam import build_tooth_sam

FramePair = tuple[np.ndarray, np.ndarray]
MODE_PROBS = {"automatic": 0.30, "box": 0.25, "clicks": 0.45}
#: The prompted modes :func:`evaluate_tooth_sam` scores.
PROMPT_MODES = ("box", "clicks_1", "clicks_3", "clicks_5")


class ClipLike(Protocol):
    """What :func:`frames_from_clips` and :func:`evaluate_tooth_sam` read from a video clip."""

    degraded: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, H, W) bool


def frames_from_clips(clips: Iterable[ClipLike], stride: int = 1) -> list[FramePair]:
    """Every ``stride``-th ``(degraded frame, teeth mask)`` pair of the clips."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    pairs: list[FramePair] = []
    for clip in clips:
        frames, masks = np.asarray(clip.degraded), np.asarray(clip.masks)
        if frames.shape[:3] != masks.shape or frames.ndim != 4:
            raise ValueError(f"clip frames {frames.shape} and masks {masks.shape} do not match")
        pairs.extend((frames[t], masks[t].astype(bool)) for t in range(0, len(frames), stride))
    return pairs


def _prepare(model: Sam, pairs: Sequence[FramePair]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Resize frames (longest side ``img_size``, SAM's transform) and masks to the input size."""
    seg = ToothSegmenter(model)
    out = []
    for frame, mask in pairs:
        frame = check_frame(frame)
        if mask.shape != frame.shape[:2] or mask.dtype != np.bool_:
            raise ValueError(f"mask must be a {frame.shape[:2]} bool array, got {mask.shape} {mask.dtype}")
        resized = seg.transform.apply_image(frame)
        h, w = resized.shape[:2]
        gt = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
        out.append((resized, gt))
    return out


def mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, float]:
    """SAM's loss for one mask: ``20 * focal + dice + MSE(iou_pred, IoU)``.

    ``logits`` and ``gt`` are ``(h, w)`` (float logits, float 0/1); ``iou_pred`` a scalar.
    Returns the loss and the actual IoU (1 when both masks are empty).
    """
    focal = sigmoid_focal_loss(logits, gt, alpha=0.25, gamma=2.0, reduction="mean")
    prob = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * gt).sum() + 1.0) / (prob.sum() + gt.sum() + 1.0)
    with torch.no_grad():
        pred = logits > 0
        union = (pred | (gt > 0.5)).sum()
        iou = float((pred & (gt > 0.5)).sum() / union) if union > 0 else 1.0
    return 20.0 * focal + dice + F.mse_loss(iou_pred.reshape(()), torch.tensor(iou, device=logits.device)), iou


def _perturbed_prior(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ground truth shifted by a few pixels and dilated or eroded: a propagated mask."""
    h, w = gt.shape
    dx, dy = rng.integers(-6, 7, size=2)
    shifted = cv2.warpAffine(gt.astype(np.uint8), np.float32([[1, 0, dx], [0, 1, dy]]), (w, h))
    k = int(rng.integers(1, 6))
    kernel = np.ones((k, k), np.uint8)
    op = cv2.dilate if rng.random() < 0.5 else cv2.erode
    return op(shifted, kernel).astype(bool)


def _sample_losses(model: Sam, emb: torch.Tensor, gt_np: np.ndarray, rng: np.random.Generator,
                   max_extra_clicks: int) -> tuple[torch.Tensor, str]:
    """Loss of one frame under a random prompt mode (``emb`` is its ``(1, C, e, e)`` embedding)."""
    img = model.image_encoder.img_size
    low = model.prompt_encoder.image_embedding_size[0] * 4
    h, w = gt_np.shape
    gt = torch.as_tensor(gt_np, dtype=torch.float32, device=emb.device)
    dev = emb.device

    def run(points: Any, box: Any, mask_in: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        low_logits, iou_pred = decode_masks(model, emb, points, box, mask_in)
        up = F.interpolate(low_logits, (img, img), mode="bilinear", align_corners=False)[0, 0, :h, :w]
        loss, iou = mask_loss(up, iou_pred, gt)
        return loss, low_logits, up, iou

    r = rng.random()
    if not gt_np.any() or r < MODE_PROBS["automatic"]:
        return run(None, None, None)[0], "automatic"
    if r < MODE_PROBS["automatic"] + MODE_PROBS["box"]:
        box = torch.as_tensor(box_from_mask(gt_np, jitter=0.1, rng=rng), device=dev)[None]
        prior = None
        if rng.random() < 0.5:
            prior = torch.as_tensor(mask_logits(_perturbed_prior(gt_np, rng), img, low), device=dev)[None]
        return run(None, box, prior)[0], "box"
    x, y, label = first_click(gt_np, rng)
    points, labels = [[x, y]], [label]  # the prompt encoder adds the 0.5 pixel-centre shift
    total, prev = torch.zeros((), device=dev), None
    n_iter = 1 + int(rng.integers(0, max_extra_clicks + 1))
    for it in range(n_iter):
        prompt = (torch.tensor([points], dtype=torch.float32, device=dev),
                  torch.tensor([labels], dtype=torch.int64, device=dev))
        loss, low_logits, up, _ = run(prompt, None, prev)
        total = total + loss
        prev = low_logits.detach()
        if it + 1 < n_iter:
            click = next_click((up > 0).detach().cpu().numpy(), gt_np, rng)
            if click is None:
                break
            points.append([click[0], click[1]])
            labels.append(click[2])
    return total / (it + 1), "clicks"


def train_tooth_sam(data: Sequence[FramePair], *, steps: int, lr: float = 1e-3, batch_size: int = 4,
                    seed: int = 0, device: torch.device | str = "cpu", log: Callable[[str], None] | None = None,
                    model: Sam | None = None, config: str = "tiny", weight_decay: float = 0.01,
                    warmup_steps: int = 100, max_extra_clicks: int = 4, log_every: int = 50,
                    history: list[float] | None = None) -> Sam:
    """Train a tooth SAM on teeth frames and return it in eval mode.

    Parameters
    ----------
    data : sequence of (frame, mask)
        ``(H, W, 3)`` uint8 RGB frames and ``(H, W)`` bool teeth masks (empty = no teeth).
    model : Sam, optional
        The model to train in place (e.g. to fine-tune an official checkpoint); by default
        a new ``build_tooth_sam(config)``.
    config : str
        Registry name used when ``model`` is ``None``.
    steps, lr, batch_size, seed, device, weight_decay, warmup_steps
        Optimisation settings; each step sees ``batch_size`` frames drawn with replacement
        (horizontal flips at random).
    max_extra_clicks : int
        Corrective clicks simulated after the first one (0-``max_extra_clicks`` per sample).
    log : callable, optional
        Receives a progress line every ``log_every`` steps.
    history : list, optional
        Receives the mean loss of each step.

    Raises
    ------
    ValueError
        Empty data, bad frame / mask shapes, or non-positive ``steps`` / ``batch_size`` / ``lr``.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    if len(data) == 0:
        raise ValueError("no training frames")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if model is None:
        model = build_tooth_sam(config)
    device = torch.device(device)
    samples = _prepare(model, data)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = warmup_cosine(optimizer, steps, warmup_steps)
    history = [] if history is None else history
    start = time.monotonic()
    for step in range(steps):
        batch = [samples[int(i)] for i in rng.integers(len(samples), size=batch_size)]
        images, gts = [], []
        for image, gt in batch:
            if rng.random() < 0.5:
                image, gt = image[:, ::-1], gt[:, ::-1]
            images.append(model.preprocess(torch.as_tensor(np.ascontiguousarray(image), device=device)
                                           .permute(2, 0, 1).float()))
            gts.append(np.ascontiguousarray(gt))
        embeddings = model.image_encoder(torch.stack(images))
        losses = [_sample_losses(model, embeddings[i:i + 1], gts[i], rng, max_extra_clicks)[0]
                  for i in range(batch_size)]
        loss = torch.stack(losses).mean()
        optimiser_step(loss, optimizer, schedule, (model, 1.0))
        history.append(float(loss.detach()))
        if log is not None and (step + 1) % log_every == 0:
            recent = float(np.mean(history[-log_every:]))
            log(f"step {step + 1}/{steps} loss {recent:.4f} lr {schedule.get_last_lr()[0]:.2e} "
                f"{time.monotonic() - start:.0f}s")
    return model.eval()


def prompted_masks(seg: ToothSegmenter, gt: np.ndarray, clicks: Sequence[int]) -> dict[str, np.ndarray]:
    """Masks of the frame cached in ``seg`` from a box and from ``n`` simulated clicks.

    Clicks are deterministic (:func:`first_click`, then :func:`next_click` without an
    rng), each decoded with all clicks so far plus the previous low-resolution logits;
    once the mask is perfect, further clicks change nothing.

    Parameters
    ----------
    seg : ToothSegmenter
        With the frame already set (:meth:`ToothSegmenter.set_image`).
    gt : np.ndarray
        ``(H, W)`` bool true mask, not empty.
    clicks : sequence of int
        Click counts to report, e.g. ``(1, 3, 5)``.

    Returns
    -------
    dict
        ``"box"`` and ``"clicks_<n>"`` → ``(H, W)`` bool.
    """
    out = {"box": seg.predict(box=box_from_mask(gt)).mask}
    x, y, label = first_click(gt)
    points, labels, previous, mask = [[x, y]], [label], None, None
    for n in range(1, max(clicks) + 1):
        if len(points) == n:  # otherwise the mask was already perfect
            pred = seg.predict(np.array(points, dtype=np.float32), np.array(labels, dtype=np.int64),
                               mask_input=previous)
            previous, mask = pred.low_res_logits, pred.mask
            click = next_click(mask, gt)
            if click is not None:
                points.append([click[0], click[1]])
                labels.append(click[2])
        if n in clicks:
            out[f"clicks_{n}"] = mask
    return out


@torch.no_grad()
def evaluate_tooth_sam(model: Sam, clips: Iterable[ClipLike] | Sequence[FramePair],
                       device: torch.device | str = "cpu", *, stride: int = 1) -> dict[str, Any]:
    """mIoU of the automatic, box and 1 / 3 / 5-click modes on frames of ``clips``.

    Clicks are deterministic (:func:`first_click`, then :func:`next_click` without an
    rng), each decoded with all clicks so far plus the previous low-resolution logits.
    Prompted modes skip frames whose ground truth is empty; the automatic mode's mIoU is
    over frames with teeth, and its false-positive rate is the fraction of frames without
    teeth where it returns a non-empty mask. IoU is measured at the frame's resolution.

    Returns
    -------
    dict
        ``miou`` (``automatic``, ``box``, ``clicks_1``, ``clicks_3``, ``clicks_5``),
        ``automatic_false_positive_rate`` (``None`` without empty frames), ``frames``,
        ``frames_with_teeth``, ``frames_without_teeth``, ``seconds_per_frame``.
    """
    items = list(clips)
    pairs = items if items and isinstance(items[0], tuple) else frames_from_clips(items, stride)  # type: ignore[arg-type]
    seg = ToothSegmenter(model.to(torch.device(device)).eval())
    truths, automatic = [], []
    prompted: dict[str, list[np.ndarray]] = {k: [] for k in PROMPT_MODES}
    start = time.monotonic()
    for frame, gt in pairs:
        seg.set_image(frame)
        truths.append(gt)
        automatic.append(seg.automatic().mask)
        masks = prompted_masks(seg, gt, (1, 3, 5)) if gt.any() else {}
        for key in PROMPT_MODES:  # nobody prompts a frame without teeth: the entry is not scored
            prompted[key].append(masks.get(key, gt))
    return segmentation_report(truths, automatic, prompted, time.monotonic() - start)


def segmentation_report(truths: Sequence[np.ndarray], automatic: Sequence[np.ndarray],
                        prompted: Mapping[str, Sequence[np.ndarray]], seconds: float) -> dict[str, Any]:
    """The :func:`evaluate_tooth_sam` figures from masks already predicted.

    Parameters
    ----------
    truths, automatic : sequence of np.ndarray
        Per frame, ``(H, W)`` bool: the true mask and the automatic-mode mask.
    prompted : mapping
        ``"box"``, ``"clicks_1"``, ... → per frame ``(H, W)`` bool masks; entries of frames
        whose true mask is empty are ignored.
    seconds : float
        Time spent predicting all of them.
    """
    scores: dict[str, list[float]] = {k: [] for k in ("automatic", *prompted)}
    false_pos: list[bool] = []
    for t, (gt, auto) in enumerate(zip(truths, automatic, strict=True)):
        if not gt.any():
            false_pos.append(bool(auto.any()))
            continue
        scores["automatic"].append(mask_iou(auto, gt))
        for key, masks in prompted.items():
            scores[key].append(mask_iou(masks[t], gt))
    return {
        "miou": {k: (float(np.mean(v)) if v else None) for k, v in scores.items()},
        "automatic_false_positive_rate": float(np.mean(false_pos)) if false_pos else None,
        "frames": len(truths),
        "frames_with_teeth": len(truths) - len(false_pos),
        "frames_without_teeth": len(false_pos),
        "seconds_per_frame": seconds / max(1, len(truths)),
    }
