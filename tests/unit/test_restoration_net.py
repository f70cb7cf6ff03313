"""The dual-branch restoration network, its bundle and clip inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicom_service.vision.restoration_model import (  # noqa: E402
    load_restoration_bundle,
    restore_clip,
    save_restoration_bundle,
)
from dicom_service.vision.restoration_net import (  # noqa: E402
    PriorRestorationNet,
    RestorationConfig,
    grow,
    pad_to_multiple,
    warp,
)


def test_warp_with_a_constant_flow_shifts_features() -> None:
    features = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 1.0  # out(x, y) = features(x + 1, y)
    out = warp(features, flow)
    assert torch.allclose(out[0, 0, :, :-1], features[0, 0, :, 1:])
    assert torch.equal(warp(features, None), features)


@pytest.mark.parametrize("prior", [True, False])
def test_forward_shapes_and_prior_requirement(prior: bool) -> None:
    model = PriorRestorationNet(RestorationConfig(width=8, use_prior=prior)).eval()
    image = torch.rand(2, 3, 32, 48)
    mask = torch.ones(2, 1, 32, 48) if prior else None
    with torch.no_grad():
        restored, region, features = model(image, mask)
        again, _, _ = model(image, mask, features, torch.zeros(2, 2, 32, 48))
    assert restored.shape == image.shape and again.shape == image.shape
    assert features.shape == (2, 8, 16, 24)
    assert (region is not None) == prior
    if prior:
        with pytest.raises(ValueError, match="mask is required"):
            model(image, None)


@pytest.mark.parametrize("prior", [True, False])
def test_grown_refinement_starts_as_the_same_function_then_learns(prior: bool) -> None:
    torch.manual_seed(0)
    model = PriorRestorationNet(RestorationConfig(width=8, use_prior=prior)).eval()
    grown = grow(model, refine=True).eval()
    assert grown.config.refine and not model.config.refine
    image = torch.rand(1, 3, 32, 48)
    mask = (torch.rand(1, 1, 32, 48) > 0.5).float() if prior else None
    with torch.no_grad():
        base, _, feats = model(image, mask)
        out, _, feats2 = grown(image, mask)
    assert torch.equal(base, out) and torch.equal(feats, feats2)
    # one step on a target moves the refinement's zero-started output layer
    grown.train()
    target = torch.rand(1, 3, 32, 48)
    torch.nn.functional.l1_loss(grown(image, mask)[0], target).backward()
    assert float(grown.refine.body[2].weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="already has"):
        grow(grown, refine=True)
    with pytest.raises(ValueError, match="name a part"):
        grow(grown)


@pytest.mark.parametrize("prior", [True, False])
def test_grown_next_frame_fusion_starts_as_the_same_function_then_learns(prior: bool) -> None:
    torch.manual_seed(0)
    model = PriorRestorationNet(RestorationConfig(width=8, use_prior=prior, refine=True)).eval()
    grown = grow(model, bidirectional=True).eval()
    assert grown.config.bidirectional and grown.config.refine
    image, following_image = torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48)
    mask = (torch.rand(1, 1, 32, 48) > 0.5).float() if prior else None
    flow = torch.full((1, 2, 32, 48), 1.5)
    with torch.no_grad():
        previous = model.frame_features(torch.rand(1, 3, 32, 48), mask)
        following = grown.frame_features(following_image, mask)
        base, _, _ = model(image, mask, previous, flow)
        out, _, _ = grown(image, mask, previous, flow, following, -flow)
    assert torch.allclose(base, out, atol=1e-6)
    grown.train()
    restored = grown(image, mask, previous, flow, following, -flow)[0]
    torch.nn.functional.l1_loss(restored, torch.rand(1, 3, 32, 48)).backward()
    assert float(grown.next_motion.mix.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="already has bidirectional"):
        grow(grown, bidirectional=True)
    with pytest.raises(ValueError, match="needs use_motion"):
        RestorationConfig(use_motion=False, bidirectional=True)


@pytest.mark.parametrize(("refine", "bidirectional"), [(False, False), (True, True)])
def test_grown_prior_starts_as_the_no_prior_model_for_any_mask_then_learns(refine: bool, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = PriorRestorationNet(RestorationConfig(width=8, use_prior=False, refine=refine,
                                                  bidirectional=bidirectional)).eval()
    with torch.no_grad():  # move every parameter off its initial value (zero-started layers too)
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    grown = grow(model, prior=True).eval()
    assert grown.config.use_prior and grown.config.refine == refine
    image, flow = torch.rand(1, 3, 32, 48), torch.randn(1, 2, 32, 48)
    with torch.no_grad():
        previous = model.frame_features(torch.rand(1, 3, 32, 48), None)
        following = model.frame_features(torch.rand(1, 3, 32, 48), None)
        base, none, _ = model(image, None, previous, flow, following, -flow)
        for mask in (torch.zeros(1, 1, 32, 48), torch.ones(1, 1, 32, 48), (torch.rand(1, 1, 32, 48) > 0.5).float()):
            out, region, _ = grown(image, mask, previous, flow, following, -flow)
            assert torch.allclose(base, out, atol=1e-6) and region is not None and none is None
            assert torch.equal(grown.frame_features(image, mask), model.frame_features(image, None))
    assert float(grown.frame.stem[0].weight.detach()[:, 12:].abs().sum()) == 0.0
    # the region features enter through zero-started fusion columns that one step moves
    grown.train()
    restored = grown(image, mask, previous, flow, following, -flow)[0]
    torch.nn.functional.l1_loss(restored, torch.rand(1, 3, 32, 48)).backward()
    assert float(grown.fuse1.weight.grad[:, 8:].abs().sum()) > 0
    assert float(grown.frame.stem[0].weight.grad[:, 12:].abs().sum()) > 0
    with pytest.raises(ValueError, match="already has use_prior"):
        grow(grown, prior=True)


def test_pad_to_multiple_keeps_the_original_size() -> None:
    padded, size = pad_to_multiple(torch.rand(1, 3, 33, 50))
    assert padded.shape[-2:] == (48, 64) and size == (33, 50)


def test_bundle_round_trip_and_tamper_detection(tmp_path) -> None:
    model = PriorRestorationNet(RestorationConfig(width=8)).eval()
    save_restoration_bundle(model, tmp_path / "b", {"command": "test"})
    loaded, config = load_restoration_bundle(tmp_path / "b")
    assert config["command"] == "test" and config["architecture"]["width"] == 8
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    weights = tmp_path / "b" / "restoration.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        load_restoration_bundle(tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "config.json").read_text())
    del doc["architecture"]
    (tmp_path / "b" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="missing or bad key"):
        load_restoration_bundle(tmp_path / "b")


def test_restore_clip_on_odd_sizes_and_one_frame() -> None:
    model = PriorRestorationNet(RestorationConfig(width=8)).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    masks = np.zeros((3, 37, 53), bool)
    flows = [None] + [np.zeros((37, 53, 2), np.float32)] * 2
    out = restore_clip(model, frames, masks, flows)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert restore_clip(model, frames[:1], masks[:1], None).shape == (1, 37, 53, 3)
    with pytest.raises(ValueError, match="masks"):
        restore_clip(model, frames, None, flows)
    with pytest.raises(ValueError, match="uint8"):
        restore_clip(model, frames.astype(np.float32), masks, flows)
    with pytest.raises(ValueError, match="one entry per frame"):
        restore_clip(model, frames, masks, flows[:2])


def test_bidirectional_restore_clip_uses_the_next_frame() -> None:
    torch.manual_seed(0)
    model = PriorRestorationNet(RestorationConfig(width=8, bidirectional=True)).eval()
    torch.nn.init.normal_(model.next_motion.mix.weight, std=0.5)  # a trained fusion is not zero
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 37, 53, 3), dtype=np.uint8)
    masks = rng.random((4, 37, 53)) > 0.5
    flows = [None] + [np.zeros((37, 53, 2), np.float32)] * 3
    following = [np.zeros((37, 53, 2), np.float32)] * 3 + [None]
    with_next = restore_clip(model, frames, masks, flows, next_flows=following)
    without = restore_clip(model, frames, masks, flows)
    assert with_next.shape == frames.shape
    # the next frame changes every frame but the last, which has no next frame
    assert all(not np.array_equal(with_next[t], without[t]) for t in range(3))
    assert np.array_equal(with_next[3], without[3])
    # the same as running the network frame by frame with the next frame's features
    with torch.no_grad():
        pad = lambda a: pad_to_multiple(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255)[0]  # noqa: E731
        image, mask = pad(frames[0]), pad(masks[0, ..., None].astype(np.uint8) * 255)
        nxt, nmask = pad(frames[1]), pad(masks[1, ..., None].astype(np.uint8) * 255)
        out, _, _ = model(image, mask, None, None, model.frame_features(nxt, nmask), torch.zeros(1, 2, 48, 64))
    expected = (out[0, :, :37, :53].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(with_next[0], expected)
