"""Stabilisation judged by the phantoms' true camera motion (``eval video``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dicom_service.training.evaluate_stabilisation import (
    border_fractions,
    shake,
    stabilisation_record,
    stabilisation_summary,
    tracked_points,
    true_pair_matrices,
)
from dicom_service.training.video_phantoms import render_clip
from dicom_service.vision.stabilisation import correction_matrices, smoothing_radius


def test_true_pair_matrices_reproduce_the_camera_flow() -> None:
    clip = render_clip(11, frames=4, instrument=False)
    assert clip.flow is not None
    pairs = true_pair_matrices(clip.flow)
    h, w = clip.clean.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w]
    for matrix, flow in zip(pairs, clip.flow, strict=True):
        moved_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
        moved_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
        assert np.abs(moved_x - xs - flow[..., 0]).max() < 0.01
        assert np.abs(moved_y - ys - flow[..., 1]).max() < 0.01


def test_shake_is_zero_for_a_steady_pan_and_grows_with_vibration() -> None:
    t = np.arange(12, dtype=np.float64)
    pan = np.stack([2.0 * t, -1.0 * t], axis=1)[:, None, :]  # (T, 1 point, 2)
    assert shake(pan) == pytest.approx(0.0, abs=1e-9)
    vibration = pan + np.stack([np.sin(2 * np.pi * t / 3), np.zeros_like(t)], axis=1)[:, None, :]
    # second difference of sin(2 pi t / 3): amplitude 3 in x, RMS 3 / sqrt(2)
    assert shake(vibration) == pytest.approx(3 / np.sqrt(2), rel=0.05)


def test_stabilisation_removes_most_of_the_true_shake() -> None:
    clip = render_clip(900_005, frames=12)
    radius = smoothing_radius(clip.fps, 12, 1.0)
    record = stabilisation_record(clip, clip.clean, radius)
    assert record is not None
    assert record["before"] > 1.0
    assert record["after_true"] < 0.3 * record["before"]
    assert record["after"] < 0.3 * record["before"] and record["motion_error_px"] < 0.5
    # the judge is the true motion, not the estimate: frames that do not match the clip
    # (here the first frame repeated) give an estimate of no motion, and no shake removed
    frozen = np.repeat(clip.clean[:1], 12, axis=0)
    still = stabilisation_record(clip, frozen, radius)
    assert still is not None and still["after"] == pytest.approx(still["before"])
    assert still["motion_error_px"] > 1.0


def test_clips_without_true_flow_or_too_short_have_no_record() -> None:
    clip = render_clip(3, frames=3, height=64, width=80)
    assert stabilisation_record(dataclasses.replace(clip, flow=None), clip.clean, 1) is None
    short = render_clip(3, frames=2, height=64, width=80)
    assert stabilisation_record(short, short.clean, 1) is None
    assert stabilisation_summary([None, None]) is None
    record = stabilisation_record(clip, clip.clean, 1)
    summary = stabilisation_summary([record, None])
    assert summary is not None and summary["clips"] == 1 and summary["before"] == record["before"]


def test_border_fraction_counts_the_columns_moved_in_from_outside() -> None:
    # camera path x: 0, 4, 0; radius 1 -> smoothed 4/3 everywhere, corrections +4/3, -8/3, +4/3 px
    motion = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [-4.0, 0.0, 0.0]])
    np.testing.assert_allclose(border_fractions(correction_matrices(motion, 1, 100, 50), 100, 50, step=1),
                               [0.01, 0.03, 0.01])
    assert not border_fractions(correction_matrices(np.zeros((5, 3)), 2, 100, 50), 100, 50).any()


def test_tracked_points_follow_the_pairs() -> None:
    shift = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    points = tracked_points(np.stack([shift, shift]), 101, 51)
    assert points.shape == (3, 5, 2)
    np.testing.assert_allclose(points[2, 0], [50 + 4, 25 - 2])


def test_eval_stabilisation_on_long_clips_writes_its_report(tmp_path) -> None:
    """``dicom-service eval stabilisation``: long held-out phantom clips restored by the
    bundled models, shake judged by the true motion for each smoothing length."""
    pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    import json

    from dicom_service.cli import main

    out = tmp_path / "stab"
    assert main(["eval", "stabilisation", "--clips", "1", "--frames", "30", "--seed", "1", "--smoothing", "0.5,1",
                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "eval_stabilisation.json").read_text())
    assert report["frames"] == 30 and report["size"] == [320, 240] and report["generator"] == "intraoral-video-2"
    assert list(report["by_smoothing"]) == ["0.5s", "1.0s"]
    assert [row["radius_frames"] for row in report["by_smoothing"].values()] == [8, 14]
    for row in report["by_smoothing"].values():
        assert row["clips"] == 1
        assert row["after"] < 0.5 * row["before"] and row["after_true"] <= row["after"] + 0.05
        assert 0.0 < row["border_fraction"] <= row["border_fraction_max"] < 0.5
    clip = report["per_clip"][0]
    assert clip["seed"] == 1_900_003
    assert clip["by_smoothing"]["1.0s"]["before"] == report["by_smoothing"]["1.0s"]["before"]
    assert "smoothing" in (out / "eval_stabilisation.txt").read_text()


@pytest.mark.parametrize("bad", [["--frames", "2"], ["--clips", "0"], ["--smoothing", "0,1"],
                                 ["--smoothing", "one"], ["--split", "holdout"], ["--height", "8"]])
def test_eval_stabilisation_bad_arguments_exit_2(bad: list[str], capsys) -> None:
    from dicom_service.cli import main

    assert main(["eval", "stabilisation", "--clips", "1", "--frames", "5", "--device", "cpu", *bad]) == 2
    assert "dicom-service eval stabilisation:" in capsys.readouterr().err
