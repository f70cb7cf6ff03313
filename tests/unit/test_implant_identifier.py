"""Stage-2 identification head (system + design attributes) and temperature scaling."""

from __future__ import annotations

import pytest

from tests.dicomcheck import require_module

torch = require_module("torch")

from dicom_service.vision.implant_identifier import CROP_SHAPE, ImplantIdentifier, fit_temperature  # noqa: E402

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


def test_needs_systems() -> None:
    with pytest.raises(ValueError):
        ImplantIdentifier([], ATTRIBUTES)
