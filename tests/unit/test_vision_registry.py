"""Runtime registry: names, devices, errors."""

from __future__ import annotations

import importlib.util

import pytest

from dicom_service.domain import ConfigError
from dicom_service.vision.registry import (
    RADIOGRAPH_RUNTIMES,
    VIDEO_RUNTIMES,
    build_radiograph_runtime,
    build_video_runtime,
    check_precision,
    resolve_device,
)
from dicom_service.vision.runtime import RadiographRuntime, VideoRuntime


def test_builds_the_baselines() -> None:
    video = build_video_runtime("baseline", device="cpu")
    radiograph = build_radiograph_runtime()
    assert isinstance(video, VideoRuntime) and video.info.family == "baseline"
    assert isinstance(radiograph, RadiographRuntime) and radiograph.info.family == "baseline"
    assert build_video_runtime("baseline-unstabilised").stabilise is False
    assert "baseline" in VIDEO_RUNTIMES and "baseline" in RADIOGRAPH_RUNTIMES


def test_stabilisation_length_reaches_the_runtimes() -> None:
    """``models.stabilisation_seconds``: every runtime smooths over the configured length."""
    assert build_video_runtime("baseline", "cpu", smoothing_seconds=2.0).smoothing_seconds == 2.0
    assert build_video_runtime("baseline-unstabilised", "cpu", smoothing_seconds=0.5).smoothing_seconds == 0.5
    if importlib.util.find_spec("torch") and importlib.util.find_spec("segment_anything"):
        learned = build_video_runtime("learned", "cpu", smoothing_seconds=2.0)
        assert learned.smoothing_seconds == 2.0 and "smoothing_s=2.0" in learned.info.parameters
    with pytest.raises(ConfigError, match="models.stabilisation_seconds"):
        build_video_runtime("baseline", "cpu", smoothing_seconds=0.0)


def test_segment_every_reaches_the_learned_runtime_from_the_settings() -> None:
    """``models.segment_every`` travels from the settings through :class:`Runtimes` to the
    learned video runtime (and is named in its provenance); the baselines have no tooth model."""
    pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from dicom_service.config import load_settings
    from dicom_service.service import Runtimes

    settings = load_settings(None, models={"video": "learned", "radiograph": "baseline", "segment_every": 2})
    video = Runtimes(settings).video
    assert video.segment_every == 2 and "segment_every=2" in video.info.parameters
    assert build_video_runtime("baseline", "cpu", segment_every=2).info.family == "baseline"


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ConfigError, match="valid choices: baseline"):
        build_video_runtime("sam-huge")
    with pytest.raises(ConfigError, match="valid choices: baseline"):
        build_radiograph_runtime("yolo")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if importlib.util.find_spec("torch") is None:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="torch"):
            resolve_device("cuda:0")


def test_learned_video_names_and_missing_bundles(tmp_path) -> None:
    from dicom_service.vision.registry import check_runtime_names

    assert {"learned", "learned-unstabilised", "learned-sr2", "learned-interp2",
            "learned-sr2-interp2", "learned-noprior"} <= set(VIDEO_RUNTIMES)
    with pytest.raises(ConfigError, match=r"models.video 'learned-sr2'.*video_restoration"):
        build_video_runtime("learned-sr2", "cpu", tmp_path)
    with pytest.raises(ConfigError, match="no trained bundle"):
        check_runtime_names("learned", "baseline", tmp_path)
    with pytest.raises(ConfigError, match="video_restoration_noprior"):
        check_runtime_names("learned-noprior", "baseline", tmp_path)
    if importlib.util.find_spec("segment_anything") is not None:
        assert build_video_runtime("learned-unstabilised", "cpu").stabilise is False


def test_precision_is_checked_against_the_device() -> None:
    for precision in ("auto", "float32", "bfloat16"):
        check_precision(precision, "cpu")
    check_precision("float16", "cuda")
    check_precision("float16", "cuda:1")
    with pytest.raises(ConfigError, match="models.precision: float16 needs a CUDA device"):
        check_precision("float16", "cpu")
    with pytest.raises(ConfigError, match="valid choices: auto, float32, bfloat16, float16"):
        check_precision("int8", "cpu")
