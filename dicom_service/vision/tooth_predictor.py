"""Interactive and automatic tooth segmentation of video frames with a SAM (seed 000).

:class:`ToothSegmenter` follows ``segment_anything.SamPredictor``: :meth:`~ToothSegmenter.set_image`
computes the image embedding once, then any number of prompts (clicks, a box, the
previous low-resolution logits) are answered by the light prompt encoder and mask decoder.

**Automatic mode** (auto-routed studies, nobody clicking): the mask decoder runs with no
prompt at all (no sparse tokens, the dense "no mask" embedding). A stock SAM returns
something arbitrary there; *our* ``tiny`` model is trained (``training/train_sam.py``) to
return the whole teeth region when unprompted, and an empty mask on frames without teeth.
The unprompted mask is then refined once with its own bounding box and logits.

Coordinates: frames are ``(H, W, 3)`` uint8 RGB indexed ``[row, column]``; clicks are
``(x, y)`` = (column, row) pixels and boxes ``(x0, y0, x1, y1)`` in the frame's pixels;
masks are ``(H, W)`` bool. Low-resolution logits are ``(1, L, L)`` float32 with
``L = 4 * img_size / patch_size`` (64 for ``tiny``, 256 for the official models), in the
model's padded input frame (as SAM's ``mask_input``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

PointPrompt = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class MaskPrediction:
    """One predicted mask.

    Attributes
    ----------
    mask : np.ndarray
        ``(H, W)`` bool, in the frame's pixels.
    score : float
        The model's predicted IoU of ``mask``.
    low_res_logits : np.ndarray
        ``(1, L, L)`` float32 logits in the model's padded input frame; feed them back as
        ``mask_input`` of the next prompt.
    """

    mask: np.ndarray
    score: float
    low_res_logits: np.ndarray


def decode_masks(model: Sam, embedding: torch.Tensor, points: PointPrompt | None = None,
                 boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for ``B`` prompts on one image; single-mask output.

    Parameters
    ----------
    embedding : torch.Tensor
        ``(1, C, e, e)`` image embedding of one image.
    points : tuple of torch.Tensor, optional
        ``(B, N, 2)`` float (x, y) in the model's input frame and ``(B, N)`` labels
        (1 foreground, 0 background, -1 padding).
    boxes : torch.Tensor, optional
        ``(B, 4)`` float ``x0, y0, x1, y1`` in the model's input frame.
    mask_input : torch.Tensor, optional
        ``(B, 1, L, L)`` low-resolution logits.

    Returns
    -------
    tuple of torch.Tensor
        ``(B, 1, L, L)`` low-resolution logits and ``(B, 1)`` predicted IoU. With no
        prompt at all ``B = 1`` (the automatic mode).
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    out = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                             multimask_output=False)
    return out[0], out[1]


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Return ``frame`` if it is an ``(H, W, 3)`` uint8 RGB array, else raise ``ValueError``."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame must have shape (H, W, 3), got {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must have dtype uint8, got {frame.dtype}")
    return frame


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """``(4,)`` float32 ``x0, y0, x1, y1`` (exclusive ends) of a bool mask, ``None`` if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def propagate_mask(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Warp a mask from this frame to the next one with the forward optical flow.

    Inverse-mapping approximation: the exact warp needs the backward flow; we assume the
    flow is smooth, so the pixel ``q`` of the next frame comes from ``q - flow(q)`` of this
    frame, sampled bilinearly from the mask (as float) and thresholded at 0.5. Outside the
    frame counts as background. Errors are of the order of the flow's spatial variation.

    Parameters
    ----------
    mask : np.ndarray
        ``(H, W)`` bool mask of this frame.
    flow : np.ndarray
        ``(H, W, 2)`` float32 forward flow from this frame to the next: ``flow[r, c] =
        (dx, dy)`` pixels (x = column, y = row).

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool mask of the next frame.

    Raises
    ------
    ValueError
        Wrong shapes, dtypes, or non-finite flow.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a (H, W) bool array, got {getattr(mask, 'shape', None)} "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if not isinstance(flow, np.ndarray) or flow.shape != (*mask.shape, 2):
        raise ValueError(f"flow must have shape {(*mask.shape, 2)}, got {getattr(flow, 'shape', None)}")
    if flow.dtype != np.float32:
        raise ValueError(f"flow must have dtype float32, got {flow.dtype}")
    if not np.isfinite(flow).all():
        raise ValueError("flow has non-finite values")
    h, w = mask.shape
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(mask.astype(np.float32), cols - flow[..., 0], rows - flow[..., 1],
                       interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return warped >= 0.5


class ToothSegmenter:
    """Stateful SAM predictor for teeth: one embedding per frame, many prompts.

    Parameters
    ----------
    model : Sam
        A model from :mod:`dicom_service.vision.tooth_sam` (moved to eval mode here).
    min_area_fraction : float
        Automatic masks covering less than this fraction of the frame are returned empty
        (no teeth in view).
    refine_automatic : bool
        Re-prompt the automatic mask once with its box and logits.
    """

    def __init__(self, model: Sam, *, min_area_fraction: float = 0.002, refine_automatic: bool = True) -> None:
        if not 0.0 <= min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction}")
        self.model = model.eval()
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.min_area_fraction = min_area_fraction
        self.refine_automatic = refine_automatic
        self._embedding: torch.Tensor | None = None
        self._original_size: tuple[int, int] | None = None
        self._input_size: tuple[int, int] | None = None

    def sibling(self) -> ToothSegmenter:
        """A segmenter with the same model and options and no cached image: one per
        thread or stream, since :meth:`set_image` keeps the image's embedding on the
        object (the model itself is shared and only read)."""
        return ToothSegmenter(self.model, min_area_fraction=self.min_area_fraction,
                              refine_automatic=self.refine_automatic)

    @property
    def low_res_size(self) -> int:
        """Side ``L`` of the low-resolution logits."""
        return 4 * self.model.prompt_encoder.image_embedding_size[0]

    @property
    def device(self) -> torch.device:
        return self.model.device

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` ``(H, W, 3)`` uint8 RGB resized so that its longest side is the model's
        ``img_size``: the part of :meth:`prepare` done on the CPU, which a stream can do in
        another thread (it uses no state of this object)."""
        return self.transform.apply_image(check_frame(frame))

    def prepare(self, frame: np.ndarray, resized: np.ndarray | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize (longest side ``img_size``), normalise and pad a frame.

        ``resized`` is :meth:`resize` of ``frame`` if the caller has it already.
        Returns ``(1, 3, S, S)`` float32 on the model's device and the resized ``(h, w)``.
        """
        if resized is None:
            resized = self.resize(frame)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).float()[None]
        return self.model.preprocess(x), (int(resized.shape[0]), int(resized.shape[1]))

    @torch.no_grad()
    def set_image(self, frame: np.ndarray, resized: np.ndarray | None = None) -> None:
        """Compute and cache the embedding of ``frame``, ``(H, W, 3)`` uint8 RGB
        (``resized``: its :meth:`resize`, if the caller has it already)."""
        self.set_resized(self.resize(frame) if resized is None else resized, (int(frame.shape[0]), int(frame.shape[1])))

    @torch.no_grad()
    def set_resized(self, resized: np.ndarray, original_size: tuple[int, int]) -> None:
        """:meth:`set_image` from the frame's :meth:`resize` alone, ``(h, w, 3)`` uint8 RGB,
        and the frame's ``(H, W)`` (a frame kept only to be segmented can be kept as this)."""
        x, input_size = self.prepare(resized, resized)
        self._embedding = self.model.image_encoder(x)
        self._original_size = (int(original_size[0]), int(original_size[1]))
        self._input_size = input_size

    def _require_image(self) -> tuple[int, int]:
        if self._embedding is None or self._original_size is None:
            raise RuntimeError("call set_image(frame) before predicting")
        return self._original_size

    def _check_logits(self, mask_input: np.ndarray) -> torch.Tensor:
        size = self.low_res_size
        arr = np.asarray(mask_input)
        if arr.shape not in ((1, size, size), (size, size)):
            raise ValueError(f"mask_input must have shape (1, {size}, {size}), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError(f"mask_input must be finite float logits, got dtype {arr.dtype}")
        return torch.as_tensor(arr, dtype=torch.float32, device=self.device).reshape(1, 1, size, size)

    @torch.no_grad()
    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None) -> MaskPrediction:
        """Segment the cached frame from clicks, a box and/or previous logits.

        Parameters
        ----------
        points : np.ndarray, optional
            ``(N, 2)`` float (x, y) pixels of the frame; needs ``labels``.
        labels : np.ndarray, optional
            ``(N,)`` int, 1 = tooth (positive), 0 = background (negative).
        box : np.ndarray, optional
            ``(4,)`` float ``x0, y0, x1, y1`` pixels of the frame, ``x0 < x1``, ``y0 < y1``.
        mask_input : np.ndarray, optional
            ``(1, L, L)`` float logits, usually ``low_res_logits`` of a previous prediction.

        Raises
        ------
        RuntimeError
            :meth:`set_image` was not called.
        ValueError
            Bad shapes, dtypes, labels or box; ``points`` without ``labels`` or vice versa.
        """
        h, w = self._require_image()
        point_prompt = None
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is not None and labels is not None:
            pts, lab = np.asarray(points), np.asarray(labels)
            if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 1:
                raise ValueError(f"points must have shape (N, 2) with N >= 1, got {pts.shape}")
            if not np.issubdtype(pts.dtype, np.number) or not np.isfinite(pts).all():
                raise ValueError("points must be finite numbers")
            if lab.shape != (pts.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
                raise ValueError(f"labels must be an int array of shape ({pts.shape[0]},), got {lab.shape} {lab.dtype}")
            if not np.isin(lab, (0, 1)).all():
                raise ValueError(f"labels must be 0 (background) or 1 (tooth), got {sorted(set(lab.tolist()))}")
            coords = self.transform.apply_coords(pts.astype(np.float64), (h, w))
            point_prompt = (torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None],
                            torch.as_tensor(lab, dtype=torch.int64, device=self.device)[None])
        box_t = None
        if box is not None:
            b = np.asarray(box)
            if b.shape != (4,) or not np.issubdtype(b.dtype, np.number) or not np.isfinite(b).all():
                raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1, got shape {b.shape}")
            if b[0] >= b[2] or b[1] >= b[3]:
                raise ValueError(f"box must have x0 < x1 and y0 < y1, got {b.tolist()}")
            box_t = torch.as_tensor(self.transform.apply_boxes(b.astype(np.float64), (h, w)),
                                    dtype=torch.float32, device=self.device)
        logits_t = None if mask_input is None else self._check_logits(mask_input)
        return self._decode(point_prompt, box_t, logits_t)

    def _decode(self, points: PointPrompt | None, boxes: torch.Tensor | None,
                mask_input: torch.Tensor | None) -> MaskPrediction:
        if self._embedding is None or self._input_size is None or self._original_size is None:
            raise RuntimeError("call set_image(frame) before predicting")
        low, iou = decode_masks(self.model, self._embedding, points, boxes, mask_input)
        full = self.model.postprocess_masks(low, self._input_size, self._original_size)
        mask = (full[0, 0] > self.model.mask_threshold).cpu().numpy()
        return MaskPrediction(mask=mask, score=float(iou[0, 0]), low_res_logits=low[0].float().cpu().numpy())

    @torch.no_grad()
    def automatic(self) -> MaskPrediction:
        """Teeth of the cached frame with no user prompt (see the module docstring).

        Returns an all-False mask (score 0) when the unprompted mask covers less than
        ``min_area_fraction`` of the frame.
        """
        h, w = self._require_image()
        pred = self._decode(None, None, None)
        if pred.mask.sum() < self.min_area_fraction * h * w:
            return MaskPrediction(np.zeros((h, w), dtype=bool), 0.0, pred.low_res_logits)
        if self.refine_automatic:
            box = mask_box(pred.mask)
            pred = self.predict(box=box, mask_input=pred.low_res_logits)
        return pred

    def mask_to_logits(self, mask: np.ndarray, scale: float = 8.0) -> np.ndarray:
        """A frame mask as ``(1, L, L)`` pseudo-logits (``±scale``) in the model's padded input frame."""
        h, w = self._require_image()
        if not isinstance(mask, np.ndarray) or mask.shape != (h, w) or mask.dtype != np.bool_:
            raise ValueError(f"mask must be a ({h}, {w}) bool array, got {getattr(mask, 'shape', None)}")
        return mask_logits(mask, self.model.image_encoder.img_size, self.low_res_size, scale)

    @torch.no_grad()
    def refine_with_mask(self, prior_mask: np.ndarray, prior_logits: np.ndarray | None = None) -> MaskPrediction:
        """Re-segment the cached frame from a mask carried over from a neighbouring frame.

        The prompt is the prior's bounding box plus, as ``mask_input``, ``prior_logits`` if
        given (e.g. the neighbour's low-resolution logits) or else the prior mask turned
        into pseudo-logits. This is how a doctor's correction on one frame reaches the next
        ones: ``propagate_mask`` the corrected mask with the optical flow, then call this on
        the next frame. An empty prior falls back to :meth:`automatic`.

        Raises
        ------
        ValueError
            ``prior_mask`` is not an ``(H, W)`` bool array of the cached frame's size.
        """
        logits = self.mask_to_logits(prior_mask) if prior_logits is None else prior_logits
        box = mask_box(prior_mask)
        if box is None:
            return self.automatic()
        return self.predict(box=box, mask_input=logits)


def mask_logits(mask: np.ndarray, img_size: int, low_res: int, scale: float = 8.0) -> np.ndarray:
    """``(H, W)`` bool mask → ``(1, low_res, low_res)`` float32 pseudo-logits in SAM's padded input frame.

    The mask is resized like the image (longest side ``img_size``), zero-padded to
    ``img_size × img_size``, area-averaged to ``low_res`` and mapped ``p → scale * (2p - 1)``.
    """
    h, w = mask.shape
    nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    resized = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    padded = np.zeros((img_size, img_size), dtype=np.float32)
    padded[:nh, :nw] = resized
    t = torch.from_numpy(padded)[None, None]
    low = F.interpolate(t, size=(low_res, low_res), mode="area")[0]
    return (scale * (2.0 * low - 1.0)).numpy().astype(np.float32)
