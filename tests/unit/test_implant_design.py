"""Parametric implant designs, their radiographic profiles and the implant-system file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from dicom_service.training.implant_design import PART_NAMES, ImplantDesign, render_implant_profile
from dicom_service.training.implant_systems import default_systems_path, load_implant_systems

PX = 0.03


def _design(**overrides: object) -> ImplantDesign:
    values: dict[str, object] = dict(
        platform="bone_level", microthread=False, coronal_thread="v_thread", body="straight",
        body_thread="v_thread", thread_pitch_mm=1.0, apical_groove=False, apical_hole="none",
        apical_body="straight", apex="flat", length_mm=10.0, diameter_mm=4.0)
    values.update(overrides)
    return ImplantDesign(**values)  # type: ignore[arg-type]


def _widths(mask: np.ndarray) -> np.ndarray:
    return mask.sum(axis=1).astype(float)


def test_profile_is_deterministic_and_typed() -> None:
    a = render_implant_profile(_design(), PX)
    b = render_implant_profile(_design(), PX)
    assert a.thickness.dtype == np.float32 and a.thickness.ndim == 2
    np.testing.assert_array_equal(a.thickness, b.thickness)
    assert a.parts.shape == (3,) + a.thickness.shape and len(PART_NAMES) == 3


def test_parts_tile_the_silhouette_by_rows() -> None:
    prof = render_implant_profile(_design(platform="tissue_level", apical_hole="round"), PX)
    union = prof.parts.any(axis=0)
    np.testing.assert_array_equal(union, prof.silhouette)
    assert int(prof.parts.sum(axis=0).max()) == 1  # disjoint
    (c0, c1), (m0, m1), (a0, a1) = prof.part_rows
    assert c0 == 0 and c1 == m0 and m1 == a0 and a1 == prof.thickness.shape[0]
    rows = np.flatnonzero(prof.silhouette.any(axis=1))
    for k, (r0, r1) in enumerate(prof.part_rows):
        assert not prof.parts[k, :r0].any() and not prof.parts[k, r1:].any()
    assert rows.min() >= 0 and prof.metal.sum() < prof.silhouette.sum()


def test_threads_make_a_serrated_outline() -> None:
    threaded = render_implant_profile(_design(), PX)
    smooth = render_implant_profile(_design(coronal_thread="none", body_thread="none"), PX)

    def edge(mask: np.ndarray) -> float:
        middle = mask[mask.shape[0] // 3: 2 * mask.shape[0] // 3]
        return float(np.abs(np.diff(_widths(middle))).sum())

    assert edge(threaded.silhouette) > 5.0 * edge(smooth.silhouette) + 20.0


@pytest.mark.parametrize("thread", ["v_thread", "buttress", "square", "reverse_buttress"])
def test_every_thread_design_is_periodic_with_its_pitch(thread: str) -> None:
    prof = render_implant_profile(_design(body_thread=thread, thread_pitch_mm=1.2), PX)
    (m0, m1) = prof.part_rows[1]
    band = prof.silhouette[m0:m1]
    right = band.shape[1] - np.argmax(band[:, ::-1], axis=1).astype(float)  # right edge per row
    right -= right.mean()
    spectrum = np.abs(np.fft.rfft(right))
    freq = np.fft.rfftfreq(right.size, d=PX)
    peak = freq[1 + int(np.argmax(spectrum[1:]))]
    assert abs(1.0 / peak - 1.2) < 0.25


def test_tapered_body_narrows_towards_the_apex() -> None:
    straight = render_implant_profile(_design(), PX)
    tapered = render_implant_profile(_design(body="tapered", apical_body="tapered"), PX)
    ratios = []
    for prof in (straight, tapered):
        (m0, _), (a0, a1) = prof.part_rows[1], prof.part_rows[2]
        top = _widths(prof.silhouette[m0:m0 + 40]).max()
        mid = a0 + (a1 - a0) // 2
        ratios.append(_widths(prof.silhouette[mid - 20:mid + 20]).max() / top)
    assert ratios[0] >= 0.95 and ratios[1] < 0.85


def test_apical_hole_is_a_radiolucent_window() -> None:
    holed = render_implant_profile(_design(apical_hole="round"), PX)
    plain = render_implant_profile(_design(), PX)
    (a0, a1) = holed.part_rows[2]
    centre = holed.thickness.shape[1] // 2
    column = holed.thickness[a0:a1, centre]
    assert column.min() == 0.0
    row = a0 + int(np.argmin(column))
    assert holed.silhouette[row, centre] and not holed.metal[row, centre]
    assert holed.thickness[row].max() > 1.0 and plain.thickness[row, centre] > 2.0


def test_tissue_level_has_a_wider_collar() -> None:
    tl = render_implant_profile(_design(platform="tissue_level"), PX)
    bl = render_implant_profile(_design(), PX)
    assert tl.bone_level_row > 10 and bl.bone_level_row < 2
    collar = _widths(tl.silhouette[: int(tl.bone_level_row)]).max()
    body = _widths(tl.silhouette[int(tl.bone_level_row) + 20:]).max()
    assert collar > 1.1 * body


def test_design_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="apex"):
        _design(apex="square")
    with pytest.raises(ValueError, match="length_mm"):
        _design(length_mm=50.0)


def test_bundled_systems_are_synthetic_and_distinct() -> None:
    systems = load_implant_systems()
    assert 6 <= len(systems) <= 12
    assert all("synthetic" in s.manufacturer.lower() for s in systems)
    combos = {tuple(sorted(s.design.items())) for s in systems}
    assert len(combos) == len(systems)
    rng = np.random.default_rng(0)
    for system in systems:
        for _ in range(5):
            design = system.sample(rng)
            for key, value in system.design.items():
                got = getattr(design, key)
                assert (got.value if hasattr(got, "value") else got) == value
            assert system.length_mm[0] <= design.length_mm <= system.length_mm[1]
            assert system.diameter_mm[0] <= design.diameter_mm <= system.diameter_mm[1]


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(default_systems_path().read_text())
    mutate(data)
    path = tmp_path / "systems.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["systems"][1]["design"].pop("apex"), r"systems\[1\].*apex"),
    (lambda d: d["systems"][2]["design"].update(body="conical"), r"systems\[2\].*body"),
    (lambda d: d["systems"][0].update(length_mm=[12.0, 8.0]), r"systems\[0\].*length_mm"),
    (lambda d: d["systems"][3].update(colour="red"), r"systems\[3\].*colour"),
    (lambda d: d["systems"].append(dict(d["systems"][0])), "duplicate"),
    (lambda d: d.update(schema_version=2), "schema_version"),
])
def test_broken_system_file_is_rejected(tmp_path: Path, mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_implant_systems(_write(tmp_path, mutate))


def test_design_attributes_are_strings() -> None:
    attrs = _design(microthread=True).attributes()
    assert attrs["microthread"] == "yes" and attrs["body"] == "straight"
    assert set(attrs) == {f.name for f in dataclasses.fields(ImplantDesign)} - {"length_mm", "diameter_mm"}
