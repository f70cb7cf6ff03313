"""Stage 2 grouping of implant design parts (seed 002 §3.1)."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_service.domain import ImplantPart
from dicom_service.vision.implant_grouping import PART_ORDER, group_parts, kmeans_pp


def _implant(x: float, y: float, *, w: float = 30, part_h: float = 40, up: bool = False,
             drop: tuple[str, ...] = (), jitter: float = 0.0, rng: np.random.Generator | None = None
             ) -> list[ImplantPart]:
    """Three stacked part boxes of a vertical implant whose platform is at (x, y)."""
    rng = rng or np.random.default_rng(0)
    parts = []
    for i, label in enumerate(PART_ORDER):
        if label in drop:
            continue
        top = y + (-(i + 1) if up else i) * part_h
        j = rng.normal(0, jitter, 4) if jitter else np.zeros(4)
        parts.append(ImplantPart(label, (x + j[0], top + j[1], x + w + j[2], top + part_h + j[3]), 0.9))
    return parts


def test_kmeans_pp_separates_clear_clusters_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(c, 0.1, (20, 2)) for c in ((0, 0), (5, 5), (0, 9))])
    a = kmeans_pp(points, 3, seed=4)
    assert np.array_equal(a, kmeans_pp(points, 3, seed=4))
    assert len({tuple(np.unique(a[i * 20:(i + 1) * 20])) for i in range(3)}) == 3
    with pytest.raises(ValueError):
        kmeans_pp(points, 0)


def test_three_implants_side_by_side() -> None:
    rng = np.random.default_rng(2)
    parts = [p for x in (40, 140, 240) for p in _implant(x, 50, jitter=2.0, rng=rng)]
    rng.shuffle(parts)
    groups = group_parts(parts, image_shape=(400, 400))
    assert len(groups) == 3
    for group, x in zip(groups, (40, 140, 240), strict=True):
        assert [p.label for p in group.parts] == list(PART_ORDER)
        assert abs(group.box[0] - x) < 6 and abs(group.box[1] - 50) < 6 and abs(group.box[3] - 170) < 6
        assert not group.inferred and not group.incomplete


def test_missing_part_is_extrapolated_along_the_axis() -> None:
    mandible = group_parts(_implant(100, 50, drop=("apical",)), image_shape=(400, 400))[0]
    assert mandible.inferred == ("apical",)
    assert mandible.box[3] == pytest.approx(170)  # one part step below the middle part
    maxilla = group_parts(_implant(100, 300, up=True, drop=("coronal",)), image_shape=(400, 400))[0]
    assert maxilla.inferred == ("coronal",)
    assert maxilla.box[1] == pytest.approx(180) and maxilla.box[3] == pytest.approx(300)  # apex up
    middle_missing = group_parts(_implant(100, 50, drop=("middle",)))[0]
    assert middle_missing.inferred == ("middle",)
    assert middle_missing.box == pytest.approx((100, 50, 130, 170))
    clipped = group_parts(_implant(100, 330, drop=("apical",)), image_shape=(400, 400))[0]
    assert clipped.box[3] == 400


def test_single_part_is_incomplete_with_lower_score() -> None:
    groups = group_parts(_implant(100, 50, drop=("middle", "apical")))
    assert len(groups) == 1 and groups[0].incomplete and groups[0].score == pytest.approx(0.3)


def test_parts_of_different_labels_far_apart_are_two_implants() -> None:
    parts = _implant(50, 50, drop=("middle", "apical")) + _implant(300, 200, drop=("coronal", "middle"))
    groups = group_parts(parts)
    assert len(groups) == 2 and all(g.incomplete for g in groups)


def test_close_neighbours_keep_one_part_per_label() -> None:
    parts = _implant(100, 50) + _implant(128, 58)  # touching implants
    groups = group_parts(parts)
    assert len(groups) == 2
    for group in groups:
        assert sorted(p.label for p in group.parts) == sorted(PART_ORDER)


def test_empty_and_bad_labels() -> None:
    assert group_parts([]) == []
    with pytest.raises(ValueError, match="unknown part labels"):
        group_parts([ImplantPart("abutment", (0, 0, 1, 1), 0.5)])


def test_overlapping_groups_are_one_implant() -> None:
    from dicom_service.vision.implant_grouping import ImplantGroup, suppress_overlaps

    def group(box: tuple[float, float, float, float], score: float) -> ImplantGroup:
        return ImplantGroup(parts=(), box=box, inferred=(), incomplete=False, score=score)

    kept = suppress_overlaps([group((0, 0, 10, 30), 0.5), group((0, 2, 10, 30), 0.9), group((20, 0, 30, 30), 0.4)])
    assert [g.score for g in kept] == [0.9, 0.4]  # left to right; the weaker duplicate is gone
    assert suppress_overlaps([]) == []


def test_one_part_per_region_before_grouping() -> None:
    from dicom_service.vision.implant_grouping import suppress_part_overlaps

    coronal = ImplantPart("coronal", (10, 0, 20, 10), 0.9)
    middle = ImplantPart("middle", (10, 9, 20, 20), 0.8)  # its neighbour along the axis: IoU 0.05, kept
    relabelled = ImplantPart("middle", (10, 1, 20, 11), 0.4)  # the coronal region seen as middle: dropped
    apical = ImplantPart("apical", (10, 19, 20, 30), 0.2)
    kept = suppress_part_overlaps([apical, relabelled, middle, coronal], 0.3)
    assert kept == [coronal, middle, apical]
    assert len(suppress_part_overlaps([apical, relabelled, middle, coronal], 1.0)) == 4
    # the stray copy would otherwise split one implant into two groups
    assert len(group_parts([coronal, middle, apical, relabelled])) == 2
    assert len(group_parts(kept)) == 1 and group_parts(kept)[0].box == (10.0, 0.0, 20.0, 30.0)


def test_a_duplicate_part_does_not_join_a_far_implant() -> None:
    # left implant: a second "middle" (a duplicate that part NMS let through); right
    # implant: its middle part was missed. The duplicate must not be moved into the
    # right implant's group, which would split that implant in two.
    left = _implant(0, 0) + [ImplantPart("middle", (2, 45, 32, 70), 0.5)]
    right = _implant(300, 0, drop=("middle",))
    groups = group_parts(left + right)
    right_groups = [g for g in groups if g.box[0] >= 290]
    assert len(right_groups) == 1
    assert right_groups[0].box == (300.0, 0.0, 330.0, 120.0) and right_groups[0].inferred == ("middle",)
    assert all(g.box[2] <= 40 for g in groups if g not in right_groups)


def test_a_group_mostly_inside_a_stronger_one_is_the_same_implant() -> None:
    from dicom_service.vision.implant_grouping import ImplantGroup, suppress_overlaps

    def group(box: tuple[float, float, float, float], score: float) -> ImplantGroup:
        return ImplantGroup(parts=(), box=box, inferred=(), incomplete=False, score=score)

    strong, cut = group((39, 230, 109, 341), 0.54), group((48, 203, 114, 301), 0.47)  # IoU 0.44, 67% inside
    assert suppress_overlaps([strong, cut]) == [strong]
    assert suppress_overlaps([strong, cut], inside=1.01) == [strong, cut]  # IoU alone keeps both
    neighbour = group((100, 230, 170, 341), 0.4)  # side by side: 13% of it inside
    assert len(suppress_overlaps([strong, neighbour])) == 2


def test_two_lone_parts_of_an_edge_cut_implant_are_one_implant() -> None:
    # stage-1 parts of a validation phantom (scores and boxes as detected): three implants,
    # the left one a 25 px sliver cut by the image edge. k-means gives its coronal and
    # apical parts to the neighbour's cluster, duplicate resolution leaves each alone, and
    # each alone scores under the finding floor; merged, they are the implant.
    def part(label: str, score: float, box: tuple[float, float, float, float]) -> ImplantPart:
        return ImplantPart(label, box, score)

    parts = [part("coronal", 0.99, (172, 161, 228, 216)), part("coronal", 0.95, (51, 159, 111, 220)),
             part("apical", 0.95, (51, 98, 108, 143)), part("apical", 0.92, (160, 59, 208, 98)),
             part("coronal", 0.85, (1, 133, 22, 220)), part("apical", 0.76, (0, 97, 26, 140)),
             part("middle", 0.71, (161, 87, 215, 127)), part("middle", 0.59, (164, 114, 221, 164)),
             part("middle", 0.51, (53, 140, 110, 176))]
    groups = group_parts(parts, image_shape=(416, 416))
    edge = [g for g in groups if g.box[2] <= 30]
    assert len(edge) == 1 and not edge[0].incomplete
    assert edge[0].box == (0.0, 97.0, 26.0, 220.0) and edge[0].inferred == ("middle",)
    assert edge[0].score == pytest.approx((0.85 + 0.76) / 2 * 2 / 3)
    middle = [g for g in groups if 40 <= g.box[0] <= 60]
    assert len(middle) == 1 and len(middle[0].parts) == 3  # the neighbour is untouched


def test_lone_parts_merge_only_with_another_label_within_reach() -> None:
    same_label = _implant(0, 0, drop=("middle", "apical")) + _implant(0, 45, drop=("middle", "apical"))
    assert len(group_parts(same_label)) == 2  # two coronal parts are two implants
    far = _implant(0, 0, drop=("middle", "apical")) + _implant(0, 400, up=True, drop=("coronal", "middle"))
    assert len(group_parts(far)) == 2 and all(g.incomplete for g in group_parts(far))
