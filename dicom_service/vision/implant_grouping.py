"""Stage 2 of seed 002's two-stage implant detection: group design parts into implants.

Stage 1 (a detector) finds implant design parts (``coronal``, ``middle``, ``apical``);
this module groups them into implants and infers each implant's box, also when parts
are missing. Method, as seed 002 §3.1 describes it, after one clean-up of stage 1's output:

0. **One part per region** (:func:`suppress_part_overlaps`): parts of any label that
   overlap a higher-scoring part by IoU ≥ 0.3 (the default) are dropped before grouping.
1. **k-means with k-means++ initialisation** (at most 300 iterations) on part centres,
   in units of the median part size. ``k`` starts at the largest number of parts of any
   one label (an implant has at most one part of each label) — seed 002 sets k to the
   number of detected parts per image; we use the smallest k compatible with the labels
   and let the heuristics below add clusters where geometry demands it.
2. **Spatial heuristics from implant geometry**: a group holds at most one part per
   label (a duplicate moves to the nearest group without that label within reach, or
   starts a new one); consecutive parts along the implant (coronal → middle → apical) must be
   adjacent — a group whose parts are too far apart for one implant is split. Then two
   single-part groups of different labels within reach of each other are merged
   (:func:`_merge_singletons`): an implant whose other parts were missed, typically one cut
   by the image edge, would otherwise give two weak one-part findings.
3. **Duplicates across groups** (:func:`suppress_overlaps`): a group whose implant box
   overlaps a higher-scoring group's by IoU ≥ 0.5, or lies 60% or more inside it, is
   the same implant seen twice (for example a stray low-score part grouped apart, or one
   long implant cut in two by k-means) and is dropped.
4. **Missing parts**: with two or more parts the implant axis is known (coronal →
   apical direction), and a missing part's box is extrapolated along it by one part
   step; with a single part the implant box is that part's box and the finding is
   marked incomplete.

Boxes are ``(x0, y0, x1, y1)`` in image pixels, x = column, y = row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicom_service.domain import ImplantPart

#: Part labels in order from the implant's platform to its apex.
PART_ORDER: tuple[str, ...] = ("coronal", "middle", "apical")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImplantGroup:
    """Parts grouped into one implant.

    Attributes
    ----------
    parts : tuple of ImplantPart
        The detected parts, ordered coronal → apical.
    box : Box
        Implant box: union of detected and inferred part boxes, clipped to the image.
    inferred : tuple of str
        Labels of parts that were missing and extrapolated along the axis.
    incomplete : bool
        True when a single part was found (no axis, nothing could be extrapolated).
    score : float
        Mean part score times the fraction of parts actually detected.
    """

    parts: tuple[ImplantPart, ...]
    box: Box
    inferred: tuple[str, ...]
    incomplete: bool
    score: float


def kmeans_pp(points: np.ndarray, k: int, *, max_iter: int = 300, seed: int = 0) -> np.ndarray:
    """k-means with k-means++ initialisation.

    Parameters
    ----------
    points : np.ndarray
        ``(N, D)`` float, ``N >= k >= 1``.
    k : int
        Number of clusters.
    max_iter : int
        Lloyd iterations at most.
    seed : int
        Seed of the k-means++ draws (results are deterministic for a seed).

    Returns
    -------
    np.ndarray
        ``(N,)`` int cluster index of each point, in ``[0, k)``.
    """
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        index = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres.append(points[index])
    centre_arr = np.asarray(centres)
    labels = np.zeros(n, dtype=np.int64)
    for iteration in range(max_iter):
        distances = ((points[:, None, :] - centre_arr[None]) ** 2).sum(-1)
        new = distances.argmin(axis=1)
        if iteration > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centre_arr[j] = members.mean(axis=0)
    return labels


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def _size(box: Box) -> float:
    return float(max(box[2] - box[0], box[3] - box[1], 1.0))


def _within_reach(part: ImplantPart, group: Sequence[ImplantPart], reach: float) -> bool:
    """Could ``part`` belong to the implant of ``group``: is some part of the group no
    farther than the part-step limit of :func:`_split_distant` for their label steps?"""
    for other in group:
        steps = max(1, abs(PART_ORDER.index(part.label) - PART_ORDER.index(other.label)))
        gap = float(np.linalg.norm(_centre(part.box) - _centre(other.box)))
        if gap <= reach * steps * 0.5 * (_size(part.box) + _size(other.box)):
            return True
    return False


def _resolve_duplicates(groups: list[list[ImplantPart]], reach: float) -> list[list[ImplantPart]]:
    """At most one part per label in a group: move extras to the nearest group lacking
    that label within reach, or else into a group of their own (an extra moved into a far
    implant would split that implant apart)."""
    changed = True
    while changed:
        changed = False
        for group in groups:
            for label in PART_ORDER:
                same = [p for p in group if p.label == label]
                if len(same) < 2:
                    continue
                others = [p for p in group if p.label != label]
                anchor = (np.mean([_centre(p.box) for p in others], axis=0) if others
                          else np.mean([_centre(p.box) for p in same], axis=0))
                same.sort(key=lambda p: float(np.linalg.norm(_centre(p.box) - anchor)))
                extra = same[-1]
                group.remove(extra)
                free = [g for g in groups if g is not group and all(p.label != label for p in g)
                        and _within_reach(extra, g, reach)]
                if free:
                    target = min(free, key=lambda g: float(min(
                        np.linalg.norm(_centre(p.box) - _centre(extra.box)) for p in g)))
                    target.append(extra)
                else:
                    groups.append([extra])
                changed = True
                break
            if changed:
                break
    return [g for g in groups if g]


def _split_distant(group: list[ImplantPart], reach: float) -> list[list[ImplantPart]]:
    """Split a group whose consecutive parts (in label order) are too far apart."""
    ordered = sorted(group, key=lambda p: PART_ORDER.index(p.label))
    pieces: list[list[ImplantPart]] = [[ordered[0]]]
    for previous, part in zip(ordered, ordered[1:], strict=False):
        steps = PART_ORDER.index(part.label) - PART_ORDER.index(previous.label)
        gap = float(np.linalg.norm(_centre(part.box) - _centre(previous.box)))
        limit = reach * steps * 0.5 * (_size(part.box) + _size(previous.box))
        if gap > limit:
            pieces.append([part])
        else:
            pieces[-1].append(part)
    return pieces


def _merge_singletons(groups: list[list[ImplantPart]], reach: float) -> list[list[ImplantPart]]:
    """Merge pairs of one-part groups with different labels that are within reach,
    nearest pairs first; each group joins at most one other."""
    singles = [i for i, g in enumerate(groups) if len(g) == 1]
    pairs = []
    for a_pos, i in enumerate(singles):
        for j in singles[a_pos + 1:]:
            a, b = groups[i][0], groups[j][0]
            if a.label != b.label and _within_reach(a, [b], reach):
                pairs.append((float(np.linalg.norm(_centre(a.box) - _centre(b.box))), i, j))
    used: set[int] = set()
    merged: list[list[ImplantPart]] = []
    for _, i, j in sorted(pairs):
        if i not in used and j not in used:
            used.update((i, j))
            merged.append(groups[i] + groups[j])
    return merged + [g for k, g in enumerate(groups) if k not in used]


def _extrapolate(parts: Sequence[ImplantPart]) -> tuple[list[Box], tuple[str, ...]]:
    """Boxes of missing parts, extrapolated along the coronal → apical axis."""
    index = {p.label: p for p in parts}
    present = [PART_ORDER.index(p.label) for p in parts]
    first, last = min(present), max(present)
    a, b = index[PART_ORDER[first]], index[PART_ORDER[last]]
    step = (_centre(b.box) - _centre(a.box)) / (last - first)
    boxes: list[Box] = []
    inferred: list[str] = []
    for i, label in enumerate(PART_ORDER):
        if label in index:
            continue
        j = min(present, key=lambda k: abs(k - i))
        x0, y0, x1, y1 = index[PART_ORDER[j]].box
        dx, dy = step * (i - j)
        boxes.append((x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        inferred.append(label)
    return boxes, tuple(inferred)


def _union(boxes: Sequence[Box], shape: tuple[int, int] | None) -> Box:
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    if shape is not None:
        rows, cols = shape
        x0, x1 = max(0.0, x0), min(float(cols), x1)
        y0, y1 = max(0.0, y0), min(float(rows), y1)
    return (float(x0), float(y0), float(x1), float(y1))


def group_parts(
    parts: Sequence[ImplantPart],
    *,
    image_shape: tuple[int, int] | None = None,
    reach: float = 1.6,
    max_iter: int = 300,
    seed: int = 0,
) -> list[ImplantGroup]:
    """Group detected design parts into implants.

    Parameters
    ----------
    parts : sequence of ImplantPart
        Stage-1 detections; labels must be in :data:`PART_ORDER`.
    image_shape : tuple of int, optional
        ``(rows, columns)``; inferred boxes are clipped to it.
    reach : float
        How far apart (in mean part sizes per label step) consecutive parts of one
        implant may be; farther parts are split into separate implants.
    max_iter : int
        k-means iterations at most (seed 002: 300).
    seed : int
        k-means++ seed.

    Returns
    -------
    list of ImplantGroup
        One per implant, ordered left to right.
    """
    unknown = sorted({p.label for p in parts} - set(PART_ORDER))
    if unknown:
        raise ValueError(f"unknown part labels {unknown}; expected {list(PART_ORDER)}")
    if not parts:
        return []
    scale = float(np.median([_size(p.box) for p in parts]))
    centres = np.array([_centre(p.box) for p in parts]) / scale
    k = max(sum(1 for p in parts if p.label == label) for label in PART_ORDER)
    labels = kmeans_pp(centres, k, max_iter=max_iter, seed=seed)
    groups: list[list[ImplantPart]] = [[p for p, c in zip(parts, labels, strict=True) if c == j]
                                       for j in range(k)]
    groups = _resolve_duplicates([g for g in groups if g], reach)
    split: list[list[ImplantPart]] = []
    for group in groups:
        split.extend(_split_distant(group, reach))
    split = _merge_singletons(split, reach)
    result: list[ImplantGroup] = []
    for group in split:
        ordered = tuple(sorted(group, key=lambda p: PART_ORDER.index(p.label)))
        boxes: list[Box] = [p.box for p in ordered]
        inferred: tuple[str, ...] = ()
        if len(ordered) >= 2:
            extra, inferred = _extrapolate(ordered)
            boxes.extend(extra)
        score = float(np.mean([p.score for p in ordered])) * len(ordered) / len(PART_ORDER)
        result.append(ImplantGroup(parts=ordered, box=_union(boxes, image_shape), inferred=inferred,
                                   incomplete=len(ordered) == 1, score=score))
    result.sort(key=lambda g: (g.box[0], g.box[1]))
    return result


def suppress_part_overlaps(parts: Sequence[ImplantPart], iou: float = 0.3) -> list[ImplantPart]:
    """Greedy non-maximum suppression of parts across labels, before grouping.

    One region of the image is one design part. A detector unsure of a region's label
    (a coronal thread that looks like the body's, say) returns it twice with different
    labels; the weaker copy would then pull k-means apart or stretch an implant box.
    Parts are visited by descending score; one is kept unless its box overlaps a kept
    part's box, whatever its label, by ``iou`` or more. Neighbouring parts of one implant
    overlap little (they meet along the implant's axis), so a low ``iou`` such as 0.3
    keeps them. ``iou >= 1`` keeps every part. Order of the result: descending score.
    """
    kept: list[ImplantPart] = []
    for part in sorted(parts, key=lambda p: -p.score):
        if iou >= 1.0 or all(_iou(part.box, other.box) < iou for other in kept):
            kept.append(part)
    return kept


def suppress_overlaps(groups: Sequence[ImplantGroup], iou: float = 0.5, inside: float = 0.6
                      ) -> list[ImplantGroup]:
    """Greedy non-maximum suppression of implant groups by their boxes.

    Groups are visited by descending score; one is kept unless its box overlaps an
    already kept box by ``iou`` or more, or has the fraction ``inside`` or more of its own
    area inside a kept box (k-means may cut one long implant into two groups, the weaker
    one lying mostly within the stronger one's box; two implants side by side overlap far
    less). The result is ordered left to right, like :func:`group_parts`.
    """
    kept: list[ImplantGroup] = []
    for group in sorted(groups, key=lambda g: -g.score):
        if all(_iou(group.box, other.box) < iou and _inside(group.box, other.box) < inside for other in kept):
            kept.append(group)
    kept.sort(key=lambda g: (g.box[0], g.box[1]))
    return kept


def _intersection(a: Box, b: Box) -> float:
    """Area shared by two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy


def _inside(a: Box, b: Box) -> float:
    """Fraction of box ``a``'s area that lies inside box ``b``."""
    area = (a[2] - a[0]) * (a[3] - a[1])
    return _intersection(a, b) / area if area > 0 else 0.0


def _iou(a: Box, b: Box) -> float:
    inter = _intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
