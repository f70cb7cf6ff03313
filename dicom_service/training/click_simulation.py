"""SAM-style click simulation for training and evaluating interactive segmentation.

As in the SAM paper (and RITM before it), the first click goes to the interior of the
object, and each further click goes to the point farthest from the boundary of the
largest error region: positive (label 1) in a false-negative region, negative (label 0)
in a false-positive region.

Coordinates: masks are ``(H, W)`` bool arrays indexed ``[row, column]``; clicks and boxes
are returned in **pixel (x, y) order**, ``x = column``, ``y = row``, as SAM's prompt
encoder expects. Boxes are ``(x0, y0, x1, y1)`` float32 with ``x1 = last column + 1``
(exclusive, so a one-pixel mask at column 3 gives ``x0 = 3, x1 = 4``).

With ``rng=None`` everything is deterministic (used for evaluation); with a
:class:`numpy.random.Generator` the click is drawn among the most interior points and the
box is jittered (used for training). Only numpy and OpenCV are used.
"""

from __future__ import annotations

import cv2
import numpy as np

Click = tuple[float, float, int]


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """Return ``mask`` as a C-contiguous bool ``(H, W)`` array or raise ``ValueError``."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must have dtype bool, got {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    return np.ascontiguousarray(arr)


def interior_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of ``region`` to the nearest pixel outside it.

    The image border counts as outside (the region is padded by one background pixel), so
    a click is never placed on the frame edge. Returns ``(H, W)`` float32, 0 outside.
    """
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def _pick(dist: np.ndarray, rng: np.random.Generator | None, spread: float) -> tuple[int, int]:
    """Return ``(row, col)`` of the maximum of ``dist`` (among equal maxima, the one nearest
    their centroid); with ``rng`` a random pixel whose distance is at least ``(1 - spread) * max``."""
    peak = float(dist.max())
    if rng is None or spread <= 0:
        rows, cols = np.nonzero(dist >= peak - 1e-4)  # the plateau of maxima (a ridge for long shapes)
        k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        return int(rows[k]), int(cols[k])
    rows, cols = np.nonzero(dist >= (1.0 - spread) * peak)
    k = int(rng.integers(len(rows)))
    return int(rows[k]), int(cols[k])


def first_click(gt: np.ndarray, rng: np.random.Generator | None = None, *, spread: float = 0.3) -> Click:
    """First positive click in the interior of the object.

    Parameters
    ----------
    gt : np.ndarray
        ``(H, W)`` bool ground-truth mask, ``[row, column]``.
    rng : np.random.Generator, optional
        ``None``: the maximum of the distance transform (deterministic). Otherwise a random
        pixel whose distance to the boundary is at least ``(1 - spread)`` times the maximum.
    spread : float
        Fraction of the maximum depth that random clicks may lose, in ``[0, 1]``.

    Returns
    -------
    tuple
        ``(x, y, 1)``: pixel centre column, row and the positive label.

    Raises
    ------
    ValueError
        ``gt`` is not a 2-D bool mask, is empty, or ``spread`` is outside ``[0, 1]``.
    """
    gt = _check_mask(gt, "gt")
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    if not gt.any():
        raise ValueError("gt mask is empty: there is no object to click on")
    row, col = _pick(interior_distance(gt), rng, spread)
    return float(col), float(row), 1


def next_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | None = None, *,
               spread: float = 0.3) -> Click | None:
    """Corrective click at the centre of the largest error region.

    The error regions are the connected components (8-connectivity) of the false
    negatives (``gt & ~pred``) and of the false positives (``pred & ~gt``). The largest one
    by the depth of its interior (the maximum of its distance transform; area breaks ties)
    receives the click, at the pixel farthest from its boundary.

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(H, W)`` bool predicted and ground-truth masks of the same shape.
    rng : np.random.Generator, optional
        ``None`` for the deterministic farthest point; otherwise jittered as in
        :func:`first_click`.
    spread : float
        See :func:`first_click`.

    Returns
    -------
    tuple or None
        ``(x, y, label)`` with ``label = 1`` in a false-negative region and ``0`` in a
        false-positive one; ``None`` when ``pred`` equals ``gt``.

    Raises
    ------
    ValueError
        The masks are not 2-D bool arrays of the same shape.
    """
    pred = _check_mask(pred, "pred")
    gt = _check_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    best: tuple[float, int, int, np.ndarray] | None = None  # (depth, area, label, dist)
    for label, error in ((1, gt & ~pred), (0, pred & ~gt)):
        if not error.any():
            continue
        count, components = cv2.connectedComponents(error.astype(np.uint8), connectivity=8)
        dist = interior_distance(error)
        for idx in range(1, count):
            region = components == idx
            region_dist = np.where(region, dist, 0.0).astype(np.float32)
            key = (float(region_dist.max()), int(region.sum()))
            if best is None or key > best[:2]:
                best = (key[0], key[1], label, region_dist)
    if best is None:
        return None
    row, col = _pick(best[3], rng, spread)
    return float(col), float(row), best[2]


def box_from_mask(gt: np.ndarray, jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Bounding box of a mask, optionally jittered like SAM's training boxes.

    Parameters
    ----------
    gt : np.ndarray
        ``(H, W)`` bool mask.
    jitter : float
        Each side moves by a normal offset of standard deviation ``jitter`` times the box
        side length (SAM uses 0.1, capped at 20 pixels; here capped at ``2 * jitter`` of the
        side). Needs ``rng``; ignored when ``rng`` is ``None``.
    rng : np.random.Generator, optional
        Source of the jitter.

    Returns
    -------
    np.ndarray
        ``(4,)`` float32 ``x0, y0, x1, y1`` in pixels (``x1``, ``y1`` exclusive), clipped
        to the image.

    Raises
    ------
    ValueError
        ``gt`` is not a 2-D bool mask, is empty, or ``jitter`` is negative.
    """
    gt = _check_mask(gt, "gt")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    rows, cols = np.nonzero(gt)
    if len(rows) == 0:
        raise ValueError("gt mask is empty: it has no bounding box")
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)
    if rng is not None and jitter > 0:
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
        offset = np.clip(rng.normal(0.0, jitter, size=4), -2 * jitter, 2 * jitter) * side
        box = box + offset.astype(np.float32)
        h, w = gt.shape
        box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:  # degenerate jitter: keep the true box
            box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)
    return box
