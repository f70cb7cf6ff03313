"""``train video`` and ``eval video`` end to end on a tiny phantom set, real paired folders,
and their argument errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from dicom_service.cli import main  # noqa: E402
from dicom_service.training.video_phantoms import render_clip, write_dataset  # noqa: E402
from dicom_service.vision.restoration_model import load_restoration_bundle  # noqa: E402

SMALL = ["--sam-steps", "4", "--steps", "4", "--batch-size", "2", "--crop", "32", "--width", "8",
         "--interframe-steps", "4", "--interframe-crop", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("video")
    data = root / "data"
    write_dataset(data, train=2, val=1, test=1, frames=3, height=64, width=80, seed=5)
    models = root / "models"
    assert main(["train", "video", "--data", str(data), "--out", str(models), *SMALL]) == 0
    return data, models


def test_train_writes_three_bundles_with_their_command(trained: tuple[Path, Path]) -> None:
    _, models = trained
    for name in ("tooth_sam", "video_restoration", "video_restoration_noprior", "video_sr2", "video_interp2"):
        config = json.loads((models / name / "config.json").read_text())
        facts = config.get("metadata", config)
        assert "train video" in facts["command"] and facts["train_clips"] == 2
    assert json.loads((models / "video_restoration_noprior" / "config.json").read_text())[
        "architecture"]["use_prior"] is False


def test_eval_writes_metrics_and_a_contact_sheet(trained: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data, models = trained
    out = tmp_path / "eval"
    assert main(["eval", "video", "--data", str(data), "--models", str(models), "--out", str(out),
                 "--device", "cpu"]) == 0
    report = json.loads((out / "eval_video.json").read_text())
    assert set(report["methods"]) >= {"degraded", "classical", "no_prior", "full_auto", "full_clicks_3"}
    # a model without the next-frame fusion: not using the next frame changes nothing
    assert report["methods"]["full_no_next"] == report["methods"]["full_auto"]
    assert report["methods"]["degraded"]["psnr"] < 40 and report["fps"]["learned_pipeline"] > 0
    assert set(report["interframe"]) == {"sr2", "sr2_to_1_5", "interp2"}
    stab = report["stabilisation"]  # judged by the phantoms' true flow
    assert stab["clips"] == report["clips"] and stab["before"] >= 0 and stab["motion_error_px"] >= 0
    assert report["per_clip"][0]["stabilisation"]["before"] == pytest.approx(stab["before"])
    scenes = report["by_scene"]
    assert scenes["with_teeth"]["clips"] + scenes["without_teeth"]["clips"] == report["clips"]
    for entry in scenes.values():
        for method in ("degraded", "full_auto"):
            if entry["clips"]:
                # the best channel gains can only raise the PSNR (up to rounding)
                assert entry[method]["psnr_gain_corrected"] >= entry[method]["psnr"] - 0.05
    # phantom clips: their degradation is known, so the clips are also grouped by it
    assert len(report["per_clip"]) == report["clips"]
    for name in ("by_defocus", "by_jpeg_quality"):
        assert sum(entry["clips"] for entry in report[name].values()) == report["clips"]
    sharp = [r for r in report["per_clip"] if r["defocus_px"] == 0.0]
    assert report["by_defocus"]["sharp"]["clips"] == len(sharp)
    assert all(30 <= r["jpeg_quality"] <= 70 and "full_auto" in r for r in report["per_clip"])
    reference = report["grain_free_reference"]  # phantoms: the frames without the pixel grain
    assert reference["clips"] == report["clips"] and 0.5 < reference["ssim"] < 1.0
    assert reference["ssim"] > report["methods"]["degraded"]["ssim"]
    assert reference["psnr"] == pytest.approx(report["per_clip"][0]["grain_free_reference"]["psnr"])
    assert set(report["segmentation"]["miou"]) == {"automatic", "box", "clicks_1", "clicks_3", "clicks_5",
                                                   "automatic_every_2", "automatic_every_4"}
    assert 0 < report["methods"]["full_auto_every_2"]["psnr"] < 100
    effect = report["prior_effect"]["psnr"]  # one test clip: the paired mean is the plain difference
    assert effect["clips"] == report["clips"] == 1 and effect["ci95"] is None
    assert effect["mean"] == pytest.approx(report["gains_db"]["full_vs_no_prior"])
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 5 * 80
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "true shake" in printed and (out / "eval_video.txt").read_text() in printed + "\n"


def test_train_on_real_paired_folders_without_masks(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, models = trained
    for k in range(2):
        clip = render_clip(40 + k, frames=3, height=64, width=80)
        for sub, frames in (("LQ", clip.degraded), ("HQ", clip.clean)):
            (tmp_path / "real" / f"clip{k}" / sub).mkdir(parents=True)
            for t, frame in enumerate(frames):
                cv2.imwrite(str(tmp_path / "real" / f"clip{k}" / sub / f"{t:04d}.png"),
                            cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "models"
    (out / "tooth_sam").mkdir(parents=True)
    for f in (models / "tooth_sam").iterdir():  # masks for the prior come from this SAM bundle
        (out / "tooth_sam" / f.name).write_bytes(f.read_bytes())
    assert main(["train", "video", "--paired", str(tmp_path / "real"), "--out", str(out), "--only", "restoration",
                 *SMALL]) == 0
    assert (out / "video_restoration" / "restoration.safetensors").is_file()


def test_bad_arguments_exit_2(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, models = trained
    assert main(["train", "video", "--data", str(data), "--out", str(tmp_path), "--only", "bogus", *SMALL]) == 2
    assert main(["train", "video", "--out", str(tmp_path), *SMALL]) == 2
    assert main(["train", "video", "--data", str(tmp_path / "none"), "--out", str(tmp_path), *SMALL]) == 2
    assert main(["train", "video", "--data", str(data), "--out", str(tmp_path), *SMALL, "--crop", "30"]) == 2
    assert main(["eval", "video", "--data", str(data), "--models", str(tmp_path), "--device", "cpu"]) == 2
    assert main(["eval", "video", "--data", str(data), "--limit", "0", "--device", "cpu"]) == 2
    assert main(["eval", "video", "--data", str(data), "--split", "nowhere", "--device", "cpu"]) == 2


def test_resume_continues_the_bundle_and_keeps_its_history(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, models = trained
    out = tmp_path / "models"
    (out / "video_restoration").mkdir(parents=True)
    for f in (models / "video_restoration").iterdir():
        (out / "video_restoration" / f.name).write_bytes(f.read_bytes())
    before = (out / "video_restoration" / "restoration.safetensors").read_bytes()
    first = json.loads((out / "video_restoration" / "config.json").read_text())
    first["training_seconds"] = 1000.0  # a long first run, so that counting a run twice would show
    (out / "video_restoration" / "config.json").write_text(json.dumps(first))
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration", "--resume",
                 *SMALL]) == 0
    config = json.loads((out / "video_restoration" / "config.json").read_text())
    assert "--resume" in config["command"] and len(config["runs"]) == 1
    assert "--resume" not in config["runs"][0]["command"]
    assert config["runs"][0]["training_seconds"] == 1000.0
    assert config["training_seconds"] == pytest.approx(1000.0 + config["training_seconds_this_run"], abs=0.11)
    assert (out / "video_restoration" / "restoration.safetensors").read_bytes() != before
    # another width than the bundle's, and a part with no bundle to continue: clear errors
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration", "--resume",
                 *SMALL, "--width", "12"]) == 2
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "noprior", "--resume",
                 *SMALL]) == 2
    # --refine grows the full-resolution refinement onto the bundle's model, then trains on
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration", "--resume",
                 "--refine", "--ssim-weight", "0.2", *SMALL]) == 0
    grown = json.loads((out / "video_restoration" / "config.json").read_text())
    assert grown["architecture"]["refine"] is True and len(grown["runs"]) == 2
    # the total counts every run once: the last entry of runs already holds the total before
    assert grown["training_seconds"] == pytest.approx(
        config["training_seconds"] + grown["training_seconds_this_run"], abs=0.11) and grown["training_seconds"] < 1500
    assert "--refine" in grown["command"] and grown["options"]["ssim_weight"] == 0.2
    model, _ = load_restoration_bundle(out / "video_restoration")
    assert model.config.refine and any(k.startswith("refine.") for k in model.state_dict())
    # a refined bundle resumes as such, and not as a model without the refinement
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration", "--resume",
                 *SMALL]) == 2
    # --bidirectional grows the next-frame fusion onto the refined bundle
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration", "--resume",
                 "--refine", "--bidirectional", *SMALL]) == 0
    both = json.loads((out / "video_restoration" / "config.json").read_text())
    assert both["architecture"]["bidirectional"] is True and len(both["runs"]) == 3
    assert "--bidirectional" in both["command"]
    model, _ = load_restoration_bundle(out / "video_restoration")
    assert any(k.startswith("next_motion.") for k in model.state_dict())
    # eval video runs the bidirectional bundle with and without the next frame
    for name in ("tooth_sam", "video_restoration_noprior"):
        shutil.copytree(models / name, out / name)
    assert main(["eval", "video", "--data", str(data), "--models", str(out), "--out", str(tmp_path / "eval"),
                 "--device", "cpu"]) == 0
    methods = json.loads((tmp_path / "eval" / "eval_video.json").read_text())["methods"]
    assert all(0 < methods[m]["psnr"] < 100 for m in ("full_auto", "full_no_next", "full_no_flow", "full_empty_mask"))
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration",
                 *SMALL, "--ssim-weight", "-1"]) == 2


def test_prior_grown_from_the_noprior_bundle(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, models = trained
    out = tmp_path / "models"
    shutil.copytree(models / "video_restoration_noprior", out / "video_restoration_noprior")
    # no prior bundle to resume is needed: the prior model starts from the noprior one, which resumes
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration,noprior",
                 "--resume", "--prior-from-noprior", "--mask-dropout", "0.2", *SMALL]) == 0
    config = json.loads((out / "video_restoration" / "config.json").read_text())
    noprior = json.loads((out / "video_restoration_noprior" / "config.json").read_text())
    assert config["architecture"]["use_prior"] is True and config["options"]["mask_dropout"] == 0.2
    assert "--prior-from-noprior" in config["command"] and noprior["options"]["mask_dropout"] == 0.0
    assert config["runs"] == noprior["runs"]  # both continued the same noprior bundle
    model, _ = load_restoration_bundle(out / "video_restoration")
    assert model.config.use_prior and any(k.startswith("region.") for k in model.state_dict())
    # the prior cannot be grown onto a model that has it, nor without the restoration part or a noprior bundle
    shutil.copytree(out / "video_restoration", out / "video_restoration_noprior", dirs_exist_ok=True)
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration",
                 "--prior-from-noprior", *SMALL]) == 2
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "noprior",
                 "--prior-from-noprior", *SMALL]) == 2
    assert main(["train", "video", "--data", str(data), "--out", str(tmp_path / "empty"), "--only", "restoration",
                 "--prior-from-noprior", *SMALL]) == 2
    assert main(["train", "video", "--data", str(data), "--out", str(out), "--only", "restoration",
                 "--mask-dropout", "1.5", *SMALL]) == 2


def test_paired_gain_counts_wins_and_brackets_the_mean() -> None:
    from dicom_service.training.evaluate_video import paired_gain

    gain = paired_gain([30.0, 31.0, 32.0, 33.0, float("nan")], [29.0, 30.5, 32.5, 31.0, 30.0])
    assert gain["clips"] == 4 and gain["wins"] == 3 and gain["mean"] == pytest.approx(0.75)
    low, high = gain["ci95"]
    assert -0.5 <= low < 0.75 < high <= 2.0
    assert paired_gain([1.0, 2.0], [1.0, 2.0])["ci95"] == [0.0, 0.0]
    assert paired_gain([float("nan")], [1.0]) == {"clips": 0, "mean": None, "ci95": None, "wins": 0}


def test_breakdown_means_per_kind() -> None:
    from dicom_service.training.evaluate_video import BREAKDOWNS, SCENE_METHODS, breakdown, breakdowns

    def record(teeth: bool, value: float, defocus: float | None = 0.0) -> dict:
        return {"teeth": teeth, "defocus_px": defocus, "jpeg_quality": 40,
                **{m: {"psnr": value, "ssim": value / 100, "psnr_gain_corrected": value + 1} for m in SCENE_METHODS}}

    out = breakdown([record(True, 30.0), record(True, 32.0), record(False, 20.0)], BREAKDOWNS["by_scene"])
    assert out["with_teeth"]["clips"] == 2 and out["with_teeth"]["full_auto"]["psnr"] == pytest.approx(31.0)
    assert out["without_teeth"]["no_prior"]["psnr_gain_corrected"] == pytest.approx(21.0)
    empty = breakdown([record(True, 30.0)], BREAKDOWNS["by_scene"])["without_teeth"]
    assert empty == {"clips": 0}
    by_defocus = breakdown([record(True, 30.0, 0.0), record(True, 26.0, 1.0), record(True, 24.0, 2.0)],
                           BREAKDOWNS["by_defocus"])
    assert [e["full_auto"]["psnr"] for e in by_defocus.values()] == [30.0, 26.0, 24.0]
    # a clip of unknown degradation (real data) leaves only the scene grouping
    assert set(breakdowns([record(True, 30.0), record(True, 30.0, None)])) == {"by_scene"}
    assert set(breakdowns([record(True, 30.0)])) == set(BREAKDOWNS)


def test_clip_degradation_of_phantoms_only() -> None:
    from dataclasses import replace

    from dicom_service.training.video_phantoms import clip_degradation

    clip = render_clip(7, frames=3, height=48, width=64)
    params = clip_degradation(clip)
    assert params is not None and params == clip_degradation(clip)
    assert params.defocus == 0.0 or 0.6 <= params.defocus <= 2.2
    assert 30 <= params.quality <= 70 and 0.3 <= params.exposure <= 1.0
    assert clip_degradation(replace(clip, name="patient_video")) is None
    assert clip_degradation(replace(clip, name="seed_8")) is None  # another seed renders other frames
    edited = clip.clean.copy()
    edited[0, 0, 0, 0] ^= 1
    assert clip_degradation(replace(clip, clean=edited)) is None


def test_eval_of_short_clips_writes_strict_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """2-frame clips: frame interpolation has no odd frame to rebuild; its metrics are null, not NaN."""
    _, models = trained
    data = tmp_path / "short"
    write_dataset(data, train=1, val=1, test=1, frames=2, height=64, width=80, seed=6)
    out = tmp_path / "eval"
    assert main(["eval", "video", "--data", str(data), "--models", str(models), "--out", str(out),
                 "--device", "cpu"]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in eval_video.json")

    report = json.loads((out / "eval_video.json").read_text(), parse_constant=refuse)
    interp = report["interframe"]["interp2"]
    assert interp["psnr_model"] is None and interp["stabilised"]["psnr_model"] is None
    assert report["interframe"]["sr2"]["psnr_model"] > 0


def test_strict_json_replaces_nan_and_infinity() -> None:
    from dicom_service.training.evaluate_video import strict_json

    value = {"a": float("nan"), "b": [1.5, np.float32(np.inf), (np.int64(3), -np.inf)], "c": "text", "d": None}
    assert strict_json(value) == {"a": None, "b": [1.5, None, [3, None]], "c": "text", "d": None}
    json.dumps(strict_json(value), allow_nan=False)
