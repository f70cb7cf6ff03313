"""Tooth SAM (seed 000): registry, official checkpoints, bundles, predictor, clicks, training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.dicomcheck import require_module

torch = require_module("torch")
require_module("safetensors")
require_module("segment_anything")

from dicom_service.training.click_simulation import box_from_mask, first_click, next_click  # noqa: E402
from dicom_service.training.train_sam import evaluate_tooth_sam, train_tooth_sam  # noqa: E402
from dicom_service.vision.tooth_predictor import ToothSegmenter, propagate_mask  # noqa: E402
from dicom_service.vision.tooth_sam import (  # noqa: E402
    SAM_CONFIGS,
    build_tooth_sam,
    config_of,
    load_sam_bundle,
    save_sam_bundle,
)


def ellipse_frame(rng: np.random.Generator, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse (the "teeth") on a dark noisy background: ``(h, w, 3)`` uint8, ``(h, w)`` bool."""
    rows, cols = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    mask = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    frame = rng.normal(40, 12, size=(h, w, 3))
    frame[mask] = rng.normal(210, 12, size=(int(mask.sum()), 3))
    return np.clip(frame, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def tiny() -> object:
    torch.manual_seed(0)
    return build_tooth_sam("tiny")


# --- registry and checkpoints ------------------------------------------------------------


def test_registry_tiny_is_small_and_official_names_match_build_sam() -> None:
    model = build_tooth_sam("tiny")
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 <= 8e6
    assert config_of(model) == SAM_CONFIGS["tiny"]
    b, large, h = SAM_CONFIGS["vit_b"], SAM_CONFIGS["vit_l"], SAM_CONFIGS["vit_h"]
    assert (b.encoder_embed_dim, b.encoder_depth, b.encoder_num_heads, b.encoder_global_attn_indexes) == (
        768, 12, 12, (2, 5, 8, 11))
    assert (large.encoder_embed_dim, large.encoder_depth, large.encoder_num_heads,
            large.encoder_global_attn_indexes) == (
        1024, 24, 16, (5, 11, 17, 23))
    assert (h.encoder_embed_dim, h.encoder_depth, h.encoder_num_heads, h.encoder_global_attn_indexes) == (
        1280, 32, 16, (7, 15, 23, 31))
    for cfg in (b, large, h):
        assert (cfg.img_size, cfg.patch_size, cfg.window_size, cfg.prompt_embed_dim, cfg.decoder_mlp_dim) == (
            1024, 16, 14, 256, 2048)
    with pytest.raises(ValueError, match="unknown SAM config"):
        build_tooth_sam("vit_x")


def _roundtrip_official(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_tooth_sam(name)
    assert config_of(model) == SAM_CONFIGS[name]
    path = tmp_path / f"sam_{name}.pth"
    torch.save(model.state_dict(), path)  # the layout of Meta's sam_vit_*.pth files
    expected = model.state_dict()
    del model
    loaded = build_tooth_sam(name, checkpoint=path)
    state = loaded.state_dict()
    for key in ("image_encoder.pos_embed", "mask_decoder.iou_token.weight", "prompt_encoder.no_mask_embed.weight"):
        assert torch.equal(state[key], expected[key])


def test_official_vit_b_checkpoint_loads(tmp_path: Path) -> None:
    _roundtrip_official("vit_b", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CI") != "true" and os.environ.get("TOOTH_SAM_LARGE") != "1",
                    reason="builds ViT-L/H (~45 s, 3 GB): runs in CI, or locally with TOOTH_SAM_LARGE=1")
@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_official_large_checkpoints_load(name: str, tmp_path: Path) -> None:
    _roundtrip_official(name, tmp_path)


def test_wrong_checkpoint_names_keys(tmp_path: Path, tiny: object) -> None:
    state = dict(tiny.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['mask_decoder.iou_token.weight'\].*extra.weight"):
        build_tooth_sam("tiny", checkpoint=path)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="missing keys"):  # a tiny checkpoint does not fit vit_b
        build_tooth_sam("vit_b", checkpoint=tmp_path / "tiny.pth")
    torch.save({"model": state, "epoch": 3}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match="flat state dict"):
        build_tooth_sam("tiny", checkpoint=tmp_path / "nested.pth")
    with pytest.raises(FileNotFoundError):
        build_tooth_sam("tiny", checkpoint=tmp_path / "absent.pth")


def test_unreadable_checkpoints_give_a_clean_error_naming_the_file(tmp_path: Path, tiny: object) -> None:
    from safetensors.torch import save_file

    save_file(dict(tiny.state_dict()), str(tmp_path / "TINY.SAFETENSORS"))  # upper-case suffix: safetensors
    model = build_tooth_sam("tiny", checkpoint=tmp_path / "TINY.SAFETENSORS")
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], tiny.state_dict()["image_encoder.pos_embed"])
    whole = (tmp_path / "TINY.SAFETENSORS").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(1).bytes(300))
    torch.save(tiny.state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "tiny.pth").read_bytes()[:4000])
    for name in ("cut.safetensors", "noise.safetensors", "noise.pth", "cut.pth"):
        with pytest.raises(ValueError) as caught:
            build_tooth_sam("tiny", checkpoint=tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: not a ")
        assert "\x1b" not in message and "weights_only=False" not in message
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(ValueError, match="folder.pth is a folder, not a weight file"):
        build_tooth_sam("tiny", checkpoint=tmp_path / "folder.pth")


def test_safetensors_checkpoint_and_bundle_roundtrip(tmp_path: Path, tiny: object) -> None:
    config_path = save_sam_bundle(tiny, "tiny", tmp_path / "bundle", {"steps": 3, "seed": 0})
    doc = json.loads(config_path.read_text())
    assert doc["name"] == "tiny" and doc["metadata"] == {"steps": 3, "seed": 0}
    assert len(doc["weights"]["sha256"]) == 64
    model, config = load_sam_bundle(tmp_path / "bundle")
    assert config["sam"]["encoder_global_attn_indexes"] == [1, 3]
    for key, value in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    again = build_tooth_sam("tiny", checkpoint=tmp_path / "bundle" / "sam.safetensors")
    assert torch.equal(again.state_dict()["image_encoder.pos_embed"], tiny.state_dict()["image_encoder.pos_embed"])
    weights = tmp_path / "bundle" / "sam.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_sam_bundle(tmp_path / "bundle")


# --- predictor ---------------------------------------------------------------------------


def test_predictor_outputs_and_validation(tiny: object) -> None:
    seg = ToothSegmenter(tiny)
    frame, mask = ellipse_frame(np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict(box=np.array([1, 2, 30, 40.0]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        seg.set_image(frame[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        seg.set_image(frame.astype(np.float32))
    seg.set_image(frame)
    pred = seg.predict(np.array([[60.0, 50.0]]), np.array([1]))
    assert pred.mask.shape == frame.shape[:2] and pred.mask.dtype == np.bool_
    assert pred.low_res_logits.shape == (1, 64, 64) and isinstance(pred.score, float)
    again = seg.predict(np.array([[60.0, 50.0]]), np.array([1]), box=box_from_mask(mask),
                        mask_input=pred.low_res_logits)
    assert again.mask.shape == frame.shape[:2]
    auto = seg.automatic()
    assert auto.mask.shape == frame.shape[:2]
    assert seg.refine_with_mask(mask).mask.shape == frame.shape[:2]
    bad = [
        ({"points": np.array([1.0, 2.0]), "labels": np.array([1])}, r"\(N, 2\)"),
        ({"points": np.array([[1.0, 2.0]])}, "together"),
        ({"points": np.array([[1.0, 2.0]]), "labels": np.array([2])}, "0 \\(background\\) or 1"),
        ({"points": np.array([[1.0, 2.0]]), "labels": np.array([1.0])}, "int array"),
        ({"box": np.array([10.0, 5, 2, 40])}, "x0 < x1"),
        ({"box": np.array([1.0, 2, 3])}, "4 finite"),
        ({"mask_input": np.zeros((1, 32, 32), np.float32)}, r"\(1, 64, 64\)"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            seg.predict(**kwargs)
    with pytest.raises(ValueError, match="bool"):
        seg.refine_with_mask(mask.astype(np.uint8))


def test_propagate_mask_follows_the_flow() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 10:25] = True
    flow = np.zeros((40, 50, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = 5.0, -3.0
    moved = propagate_mask(mask, flow)
    expected = np.zeros_like(mask)
    expected[7:17, 15:30] = True
    assert np.array_equal(moved, expected)
    with pytest.raises(ValueError, match="float32"):
        propagate_mask(mask, flow.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        propagate_mask(mask, flow[:, :10])


# --- click simulation --------------------------------------------------------------------


def test_clicks_and_boxes() -> None:
    gt = np.zeros((30, 40), dtype=bool)
    gt[5:16, 10:31] = True  # rows 5-15, columns 10-30: centre (x=20, y=10)
    assert first_click(gt) == (20.0, 10.0, 1)
    rng = np.random.default_rng(0)
    for _ in range(10):
        x, y, label = first_click(gt, rng)
        assert label == 1 and gt[int(y), int(x)]
    assert box_from_mask(gt).tolist() == [10.0, 5.0, 31.0, 16.0]
    jittered = box_from_mask(gt, jitter=0.1, rng=np.random.default_rng(1))
    assert jittered.shape == (4,) and not np.array_equal(jittered, box_from_mask(gt))
    assert np.all(np.abs(jittered - box_from_mask(gt)) <= 0.2 * 21 + 1e-4)
    pred = gt.copy()
    pred[5:16, 22:31] = False  # a false-negative block on the right
    pred[20:28, 0:8] = True  # a smaller false-positive block
    x, y, label = next_click(pred, gt)
    assert label == 1 and 22 <= x <= 30 and 5 <= y <= 15
    pred[5:16, 22:31] = True
    x, y, label = next_click(pred, gt)
    assert label == 0 and x < 8 and 20 <= y < 28
    assert next_click(gt, gt) is None
    with pytest.raises(ValueError, match="empty"):
        first_click(np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        next_click(pred.astype(np.uint8), gt)
    with pytest.raises(ValueError, match="differs"):
        next_click(pred[:10], gt)


# --- training ----------------------------------------------------------------------------


def test_tiny_training_reduces_loss_and_evaluates() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = [ellipse_frame(rng) for _ in range(8)]
    blank = np.clip(rng.normal(40, 12, size=(96, 128, 3)), 0, 255).astype(np.uint8)
    data.append((blank, np.zeros((96, 128), dtype=bool)))
    history: list[float] = []
    model = train_tooth_sam(data, steps=40, lr=2e-3, batch_size=2, seed=0, device="cpu",
                            warmup_steps=5, history=history)
    assert len(history) == 40
    assert np.mean(history[-10:]) < 0.7 * np.mean(history[:10])
    metrics = evaluate_tooth_sam(model, data[:3] + data[-1:], "cpu")
    assert metrics["frames"] == 4 and metrics["frames_with_teeth"] == 3 and metrics["frames_without_teeth"] == 1
    assert set(metrics["miou"]) == {"automatic", "box", "clicks_1", "clicks_3", "clicks_5"}
    assert all(0.0 <= v <= 1.0 for v in metrics["miou"].values())
