"""Restoration training on tiny phantom clips: batches, loss falls, PSNR improves."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicom_service.training.train_restoration import (  # noqa: E402
    PairSampler,
    RestorationTrainOptions,
    mean_psnr,
    ssim_torch,
    train_restoration,
)
from dicom_service.training.video_phantoms import render_clip  # noqa: E402
from dicom_service.vision.restoration_net import RestorationConfig  # noqa: E402


@pytest.fixture(scope="module")
def clips():
    return [render_clip(seed, frames=3, height=64, width=80, teeth=True) for seed in (1, 2)]


def test_sampler_batches_are_consistent(clips) -> None:
    batch = PairSampler(clips, 32, seed=0).batch(3)
    assert batch["image"].shape == (3, 3, 32, 32) and batch["flow"].shape == (3, 2, 32, 32)
    assert batch["mask"].shape == (3, 1, 32, 32)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    with pytest.raises(ValueError, match="multiple of 16"):
        PairSampler(clips, 30, seed=0)
    with pytest.raises(ValueError, match="no clip"):
        PairSampler(clips, 128, seed=0)


def test_bidirectional_sampler_gives_triplets_with_edge_frames_standing_in(clips) -> None:
    batch = PairSampler(clips, 64, seed=0, bidirectional=True).batch(40)
    assert batch["next"].shape == (40, 3, 64, 64) and batch["next_flow"].shape == (40, 2, 64, 64)
    assert batch["next_mask"].shape == (40, 1, 64, 64)
    first = [i for i in range(40) if torch.equal(batch["previous"][i], batch["image"][i])]
    last = [i for i in range(40) if torch.equal(batch["next"][i], batch["image"][i])]
    assert first and last and not set(first) & set(last)  # 3-frame clips: t = 0 and t = 2 both drawn
    # a missing neighbour comes with a zero flow, a real one with the DIS flow
    assert all(float(batch["flow"][i].abs().max()) == 0.0 for i in first)
    assert all(float(batch["next_flow"][i].abs().max()) == 0.0 for i in last)
    middle = [i for i in range(40) if i not in first and i not in last]
    assert middle and all(float(batch["next_flow"][i].abs().max()) > 0.0 for i in middle)
    # the pair sampler keeps its draws: every frame has a real previous frame
    pairs = PairSampler(clips, 64, seed=0).batch(40)
    assert "next" not in pairs and not any(torch.equal(pairs["previous"][i], pairs["image"][i]) for i in range(40))


def test_mask_dropout_empties_every_mask_of_a_share_of_the_samples(clips) -> None:
    def empty(batch: dict, key: str) -> set[int]:
        return {i for i in range(len(batch[key])) if float(batch[key][i].sum()) == 0.0}

    kept = PairSampler(clips, 64, seed=0, bidirectional=True).batch(60)
    assert not empty(kept, "mask")  # every crop of these 64x80 clips shows teeth
    dropped = PairSampler(clips, 64, seed=0, bidirectional=True, mask_dropout=0.5).batch(60)
    gone = empty(dropped, "mask")
    assert 10 <= len(gone) <= 50
    assert gone <= empty(dropped, "previous_mask") and gone <= empty(dropped, "next_mask")
    assert not torch.equal(dropped["image"][sorted(gone)[0]], torch.zeros(3, 64, 64))  # the frames are kept
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="mask dropout"):
            RestorationTrainOptions(mask_dropout=bad).validate()


def test_bidirectional_training_runs_and_improves_on_the_input(clips) -> None:
    opts = RestorationTrainOptions(steps=60, batch_size=4, crop=32, lr=2e-3, warmup_steps=5)
    model = train_restoration(RestorationConfig(width=8, bidirectional=True), clips, opts)
    assert model.config.bidirectional
    assert mean_psnr(model, clips) > float(np.mean([mean_psnr_of(c) for c in clips]))


@pytest.mark.parametrize("prior", [True, False])
def test_short_training_lowers_the_loss(clips, prior: bool) -> None:
    records: list[dict] = []
    opts = RestorationTrainOptions(steps=100, batch_size=4, crop=32, lr=2e-3, warmup_steps=10)
    model = train_restoration(RestorationConfig(width=8, use_prior=prior), clips, opts, log_fn=records.append)
    assert records[-1]["loss"] < 0.9 * records[0]["loss"]
    degraded = float(np.mean([mean_psnr_of(c) for c in clips]))
    assert mean_psnr(model, clips) > degraded


def mean_psnr_of(clip) -> float:
    from dicom_service.training.image_metrics import psnr

    return psnr(clip.degraded, clip.clean)


def test_training_continues_from_an_initial_model(clips) -> None:
    opts = RestorationTrainOptions(steps=20, batch_size=2, crop=32, lr=2e-3, warmup_steps=2)
    config = RestorationConfig(width=8, use_prior=True)
    first = train_restoration(config, clips, opts)
    weights = {k: v.clone() for k, v in first.state_dict().items()}
    second = train_restoration(config, clips, opts, initial=first)
    assert second is first  # trained in place, on from its weights
    assert any(not torch.equal(weights[k], v) for k, v in second.state_dict().items())
    with pytest.raises(ValueError, match="cannot continue"):
        train_restoration(RestorationConfig(width=12, use_prior=True), clips, opts, initial=first)


def test_ssim_torch_matches_the_reported_metric(clips) -> None:
    from dicom_service.training.image_metrics import ssim

    clip = clips[0]
    a = torch.from_numpy(clip.degraded[0]).permute(2, 0, 1)[None].float() / 255
    b = torch.from_numpy(clip.clean[0]).permute(2, 0, 1)[None].float() / 255
    # the same measure up to the border handling (reflect-101 vs reflect) and rounding
    assert float(ssim_torch(a, b)) == pytest.approx(ssim(clip.degraded[0], clip.clean[0]), abs=5e-3)
    assert float(ssim_torch(b, b)) == pytest.approx(1.0, abs=1e-5)
    a.requires_grad_(True)
    (1 - ssim_torch(a, b)).backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_ssim_term_trains_and_bad_weight_is_refused(clips) -> None:
    opts = RestorationTrainOptions(steps=60, batch_size=4, crop=32, lr=2e-3, warmup_steps=5, ssim_weight=0.5)
    records: list[dict] = []
    model = train_restoration(RestorationConfig(width=8, use_prior=True, refine=True), clips, opts,
                              log_fn=records.append)
    assert records[-1]["loss"] < records[0]["loss"]
    assert model.config.refine
    with pytest.raises(ValueError, match="SSIM weight"):
        RestorationTrainOptions(ssim_weight=-0.1).validate()
