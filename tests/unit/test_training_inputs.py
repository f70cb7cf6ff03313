"""``train implants`` and ``train video`` refuse bad inputs before training (exit 2, a
message naming the entry), and input errors found while training exit 2 too."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from tests import builders
from tests.dicomcheck import require_module

require_module("torch")
require_module("safetensors")
require_module("segment_anything")

from dicom_service.cli import main  # noqa: E402
from dicom_service.training.cli_video import mask_bundle  # noqa: E402
from dicom_service.training.video_dataset import load_paired_folder  # noqa: E402
from dicom_service.training.video_phantoms import render_clip  # noqa: E402
from dicom_service.training.video_recipe import held_out, load_training_clips  # noqa: E402
from dicom_service.vision.registry import default_models_dir  # noqa: E402

IMPLANTS_SMALL = ["--vit", "test", "--img-size", "64", "--pretrain-epochs", "1", "--epochs", "1",
                  "--identifier-epochs", "1", "--limit-images", "4", "--device", "cpu"]
VIDEO_SMALL = ["--sam-steps", "2", "--steps", "2", "--batch-size", "2", "--crop", "32", "--width", "8",
               "--interframe-steps", "2", "--interframe-crop", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 periapical phantoms, the first with an implant in ``val``, the others in ``train``."""
    return builders.implant_coco_with_splits(tmp_path_factory.mktemp("implants"), periapical=4, panoramic=0, seed=3,
                                             held_out=("val",))


def _variant(tmp_path: Path, phantoms: Path, mutate: Callable[[dict], None]) -> Path:
    """A copy of the phantoms' COCO file changed by ``mutate`` (images by absolute path)."""
    doc = json.loads(phantoms.read_text())
    for image in doc["images"]:
        image["file_name"] = str(phantoms.parent / image["file_name"])
    mutate(doc)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def _train_implants(coco: Path, out: Path, *extra: str) -> int:
    return main(["train", "implants", "--coco", str(coco), "--out", str(out), *IMPLANTS_SMALL, *extra])


def _no_system(doc: dict) -> None:
    for ann in doc["annotations"]:
        ann.pop("system")


def _first_val_image_gone(doc: dict) -> None:
    val = next(im for im in doc["images"] if im["split"] == "val")
    val["file_name"] = "nowhere/missing.png"


@pytest.mark.parametrize("mutate, message", [
    (_no_system, "no implant annotation with a \"system\": the identifier needs at least one implant system"),
    (lambda d: d.update(annotations=[]), "has no coronal, middle or apical annotation"),
    (lambda d: d["categories"].append({"id": 9, "name": "crown"}) or d["annotations"][0].update(category_id=9),
     r"annotations\[0\]: category 'crown' \(id 9\) is not one of implant, coronal, middle, apical"),
    (_first_val_image_gone, r"missing.png does not exist"),
    (lambda d: [im.update(split="holdout") for im in d["images"]], r"images\[0\]: unknown split 'holdout'"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [416, 416], "counts": [0, 5]}),
     r"annotations\[0\]: RLE segmentations are not supported"),
    (lambda d: d["images"][0].update(height=417), r"the file is 416 x 416 pixels but the entry says 416 x 417"),
])
def test_bad_coco_exits_2_before_any_training(tmp_path: Path, phantoms: Path, mutate: Callable[[dict], None],
                                              message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train_implants(_variant(tmp_path, phantoms, mutate), tmp_path / "bundle") == 2
    err = capsys.readouterr().err
    assert err.startswith("dicom-service train: ") and '"stage"' not in err  # nothing trained
    assert re.search(message, err), err
    assert not (tmp_path / "bundle").exists()


def test_capitalised_names_train(tmp_path: Path, phantoms: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def capitalise(doc: dict) -> None:
        for category in doc["categories"]:
            category["name"] = category["name"].capitalize()
        for image in doc["images"]:
            image["split"] = image["split"].capitalize()

    out = tmp_path / "bundle"
    assert _train_implants(_variant(tmp_path, phantoms, capitalise), out, "--pretrain-epochs", "0") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == {"train": 3, "val": 1} and summary["crops"]["train"] > 0
    assert (out / "identifier.safetensors").is_file()


def test_bad_options_exit_2(tmp_path: Path, phantoms: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train_implants(phantoms, tmp_path / "bundle", "--device", "gpu") == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
    a_file = tmp_path / "bundle.txt"
    a_file.write_text("not a folder")
    assert _train_implants(phantoms, a_file) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and '"stage"' not in err


def test_unreadable_image_found_while_training_exits_2(tmp_path: Path, phantoms: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG whose header is whole but whose pixels are cut off passes the checks; training then
    fails to read it: exit 2 with a message, no traceback."""
    doc = json.loads(phantoms.read_text())
    name = next(im["file_name"] for im in doc["images"] if im["split"] == "train")
    data = (phantoms.parent / name).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])

    def use_cut_file(d: dict) -> None:
        for image in d["images"]:
            if image["file_name"].endswith(name):
                image["file_name"] = str(cut)

    coco = _variant(tmp_path, phantoms, use_cut_file)
    assert _train_implants(coco, tmp_path / "bundle") == 2
    assert f"cannot read image {cut}" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_ablation_checks_the_data_before_training(tmp_path: Path, phantoms: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    coco = _variant(tmp_path, phantoms, _no_system)
    assert main(["eval", "implants-ablation", "--coco", str(coco), *IMPLANTS_SMALL]) == 2
    err = capsys.readouterr().err
    assert "the identifier needs at least one implant system" in err and '"stage"' not in err


# --- train video on real paired clips ---------------------------------------------------


def _paired(root: Path, clips: int, *, masks: bool = False, frames: int = 3) -> Path:
    """``clips`` real-layout clips ``clip<k>/{LQ,HQ[,masks]}`` of ``frames`` phantom frames 64 x 80."""
    for k in range(clips):
        clip = render_clip(40 + k, frames=frames, height=64, width=80)
        for sub, stack in (("LQ", clip.degraded), ("HQ", clip.clean)):
            (root / f"clip{k}" / sub).mkdir(parents=True)
            for t, frame in enumerate(stack):
                cv2.imwrite(str(root / f"clip{k}" / sub / f"{t:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if masks:
            (root / f"clip{k}" / "masks").mkdir()
            for t, mask in enumerate(clip.masks):
                cv2.imwrite(str(root / f"clip{k}" / "masks" / f"{t:04d}.png"), mask.astype("uint8") * 255)
    return root


def _train_video(paired: Path, out: Path, *extra: str) -> int:
    return main(["train", "video", "--paired", str(paired), "--out", str(out), *VIDEO_SMALL, *extra])


def test_sam_without_masks_exits_2_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paired = _paired(tmp_path / "real", 2)
    assert _train_video(paired, tmp_path / "models") == 2  # the default --only includes sam
    err = capsys.readouterr().err
    assert "training the tooth SAM needs tooth masks for every training clip" in err and "clip0" in err
    assert '"stage"' not in err and not (tmp_path / "models").exists()


def test_masks_come_from_the_bundled_sam_without_one_in_out(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    paired = _paired(tmp_path / "real", 2)
    out = tmp_path / "models"
    assert _train_video(paired, out, "--only", "restoration") == 0
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    masks = next(r for r in records if r["stage"] == "masks")
    assert masks["sam_bundle"] == str(default_models_dir() / "tooth_sam")
    assert masks["clips_without_masks"] == ["clip0", "clip1"]
    config = json.loads((out / "video_restoration" / "config.json").read_text())
    assert config["train_clips"] == 1 and config["val_clips"] == 1


def test_mask_bundle_prefers_out_and_refuses_without_any(tmp_path: Path) -> None:
    clips = load_training_clips(None, _paired(tmp_path / "real", 2), "train")
    bundled = default_models_dir() / "tooth_sam"
    out = tmp_path / "models"
    assert mask_bundle(out, ["sr2"], clips) is None  # no restoration part: no masks needed
    assert mask_bundle(out, ["restoration"], clips) == bundled
    assert mask_bundle(out, ["sam", "noprior"], clips) == out / "tooth_sam"  # trained by the same run
    (out / "tooth_sam").mkdir(parents=True)
    (out / "tooth_sam" / "config.json").write_text("{}")
    assert mask_bundle(out, ["restoration"], clips) == out / "tooth_sam"
    with pytest.raises(ValueError, match="need tooth masks from a SAM bundle, but there is none"):
        mask_bundle(tmp_path / "empty", ["noprior"], clips, bundled=tmp_path / "no_bundle")


def test_held_out_clips_are_never_trained_on(tmp_path: Path) -> None:
    assert held_out(2) == [1] and held_out(4) == [3] and held_out(5) == [4] and held_out(11) == [4, 9]
    with pytest.raises(ValueError, match="at least 2 are needed"):
        held_out(1)
    paired = _paired(tmp_path / "real", 3, masks=True)
    names = {split: [c.name for c in load_training_clips(None, paired, split)] for split in ("train", "val", "test")}
    assert names == {"train": ["clip0", "clip1"], "val": ["clip2"], "test": ["clip2"]}
    one = _paired(tmp_path / "one", 1, masks=True)
    with pytest.raises(ValueError, match="1 paired clip"):
        load_training_clips(None, one, "train")


def test_paired_data_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = _paired(tmp_path / "one", 1, masks=True)
    assert _train_video(one, tmp_path / "models") == 2
    assert "at least 2 are needed" in capsys.readouterr().err
    assert main(["eval", "video", "--paired", str(one), "--device", "cpu"]) == 2
    half = _paired(tmp_path / "half", 2, masks=True)
    (half / "clip2" / "LQ").mkdir(parents=True)
    assert _train_video(half, tmp_path / "models") == 2
    assert "clip2: has LQ/ but no HQ/ folder" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
    assert load_paired_folder(half / "clip0").masks is not None


@pytest.mark.parametrize("option, value, message", [
    ("--sam-batch-size", "0", "--sam-batch-size must be >= 1"),
    ("--sam-lr", "-1", "--sam-lr must be > 0"),
    ("--device", "gpu", "gpu"),
])
def test_bad_video_options_exit_2(tmp_path: Path, option: str, value: str, message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    paired = _paired(tmp_path / "real", 2, masks=True)
    assert _train_video(paired, tmp_path / "models", "--only", "sam", option, value) == 2
    err = capsys.readouterr().err
    assert message in err and '"stage"' not in err


def test_video_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paired = _paired(tmp_path / "real", 2, masks=True)
    a_file = tmp_path / "models.txt"
    a_file.write_text("not a folder")
    assert _train_video(paired, a_file, "--only", "sam") == 2
    err = capsys.readouterr().err
    assert "is a file" in err and '"stage"' not in err


def test_input_error_found_while_training_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """x2 interpolation needs 3-frame clips; the trainer finds none: a message, not a traceback."""
    paired = _paired(tmp_path / "real", 2, masks=True, frames=2)
    assert _train_video(paired, tmp_path / "models", "--only", "interp2") == 2
    assert "dicom-service train video: no clip has >= 3 frames" in capsys.readouterr().err
