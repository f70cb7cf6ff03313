"""Stage-2 identification head (system + design attributes) and temperature scaling."""

from __future__ import annotations

import pytest

from tests.dicomcheck import require_module

torch = require_module("torch")

from dicom_service.vision.implant_identifier import (  # noqa: E402
    CROP_SHAPE,
    TEMPERATURE_BOUNDS,
    ImplantIdentifier,
    fit_temperature,
)

SYSTEMS = ("A", "B", "C")
ATTRIBUTES = {"body": ("straight", "tapered"), "apex": ("flat", "rounded")}


def _batch(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    systems = torch.arange(n) % 3
    crops = 0.1 * torch.rand(n, 1, *CROP_SHAPE, generator=g)
    for i, s in enumerate(systems.tolist()):  # each system a different bright band position
        crops[i, :, 20 + 50 * s: 60 + 50 * s, 16:48] += 0.8
    body = (systems == 2).long()
    apex = torch.full((n,), -1)  # not annotated
    return crops, systems, {"body": body, "apex": apex}


def test_learns_a_separable_toy_problem_and_reports_top3() -> None:
    torch.manual_seed(0)
    model = ImplantIdentifier(SYSTEMS, ATTRIBUTES, width=8)
    crops, systems, attrs = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = model.loss(crops, systems, attrs).item()
    for _ in range(40):
        loss = model.loss(crops, systems, attrs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    result = model.identify(crops[:3])
    assert [r["systems"][0][0] for r in result] == ["A", "B", "C"]
    assert len(result[0]["systems"]) == 3
    assert sum(p for _, p in result[0]["systems"]) == pytest.approx(1.0, abs=1e-5)
    assert set(result[0]["attributes"]) == {"body", "apex"}


def test_temperature_scaling_calibrates_overconfident_logits() -> None:
    g = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 3, (600,), generator=g)
    logits = torch.randn(600, 3, generator=g)
    logits[torch.arange(600), targets] += 1.0  # informative but noisy ...
    overconfident = 8.0 * logits  # ... and far too sharp
    t = fit_temperature(overconfident, targets)
    assert 4.0 < t < 16.0
    nll = torch.nn.functional.cross_entropy
    assert nll(overconfident / t, targets) < nll(overconfident, targets)
    # the golden-section minimum is the NLL minimum: nudging T either way does no better
    for nudged in (0.98 * t, 1.02 * t):
        assert nll(overconfident.double() / t, targets) <= nll(overconfident.double() / nudged, targets)


def test_temperature_is_bounded_when_held_out_data_has_no_error() -> None:
    """All right: the NLL falls as T -> 0, so the lower bound decides, and every top-3
    probability of a confident crop stays a positive float32 (unbounded, T collapsed to
    0.063 on a real bundle and the 2nd and 3rd probabilities became 0)."""
    g = torch.Generator().manual_seed(4)
    targets = torch.randint(0, 3, (200,), generator=g)
    logits = torch.randn(200, 3, generator=g)
    logits[torch.arange(200), targets] += 6.0  # every argmax right
    assert bool((logits.argmax(1) == targets).all())
    t = fit_temperature(logits, targets)
    assert t == pytest.approx(TEMPERATURE_BOUNDS[0])
    confident = torch.tensor([[24.0, 0.0, -1.0]])
    assert bool((torch.softmax(confident / t, dim=1) > 0).all())
    assert fit_temperature(-logits, targets) == pytest.approx(TEMPERATURE_BOUNDS[1])  # all wrong: flattest
    assert fit_temperature(logits, targets, bounds=(0.5, 0.5)) == 0.5
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(logits, targets, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="N > 0"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_needs_systems() -> None:
    with pytest.raises(ValueError):
        ImplantIdentifier([], ATTRIBUTES)
