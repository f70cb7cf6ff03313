"""Compute precision of the learned video models: the dtype chosen per device, the
setting's errors, and that bfloat16 restores what float32 restores."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from dicom_service.domain import ConfigError  # noqa: E402
from dicom_service.training.image_metrics import psnr  # noqa: E402
from dicom_service.training.video_phantoms import clip_seed, render_clip  # noqa: E402
from dicom_service.vision.precision import PRECISIONS, for_inference, inference_dtype, native_bfloat16  # noqa: E402
from dicom_service.vision.registry import build_video_runtime, check_compile, default_models_dir  # noqa: E402
from dicom_service.vision.restoration_net import PriorRestorationNet, RestorationConfig  # noqa: E402
from dicom_service.vision.video_runtime import LearnedVideoRuntime  # noqa: E402
from tests.dicomcheck import require_tool  # noqa: E402


def test_dtype_per_device_and_request() -> None:
    assert PRECISIONS[0] == "auto"
    assert inference_dtype("cpu", "auto") == (torch.bfloat16 if native_bfloat16() else torch.float32)
    assert inference_dtype("cuda", "auto") == torch.float16  # no GPU needed to decide
    assert inference_dtype("cpu", "float32") == torch.float32
    assert inference_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    assert inference_dtype("cuda:0", "float16") == torch.float16
    with pytest.raises(ValueError, match="CUDA"):
        inference_dtype("cpu", "float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_dtype("cpu", "int8")


def test_for_inference_is_channels_last_and_changes_nothing_else() -> None:
    torch.manual_seed(0)
    model = PriorRestorationNet(RestorationConfig(width=8))
    x = torch.rand(1, 3, 32, 48)
    mask = (torch.rand(1, 1, 32, 48) > 0.5).float()
    with torch.no_grad():
        before = model.eval()(x, mask)[0]
        prepared = for_inference(model)
        after = prepared(x, mask)[0]
    conv = next(m for m in prepared.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not prepared.training
    assert torch.allclose(before, after, atol=1e-5)


def test_bfloat16_restores_what_float32_restores() -> None:
    clip = render_clip(clip_seed(0, "test", 8), frames=3, height=96, width=128, teeth=True)
    results = {}
    for precision in ("float32", "bfloat16"):
        runtime = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False, precision=precision)
        assert f"precision={precision}" in runtime.info.parameters
        results[precision] = runtime.enhance(clip.degraded, clip.fps).frames
    diff = np.abs(results["float32"].astype(np.int16) - results["bfloat16"].astype(np.int16))
    assert diff.mean() < 1.0 and diff.max() <= 8
    assert abs(psnr(results["bfloat16"], clip.clean) - psnr(results["float32"], clip.clean)) < 0.2


def test_float16_on_the_cpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="models.precision"):
        build_video_runtime("learned", "cpu", precision="float16")
    assert build_video_runtime("baseline", "cpu", precision="float16").info.family != "ai"  # ignored there


def test_compiled_restoration_restores_what_the_eager_one_restores() -> None:
    require_tool("g++", "g++")  # torch.compile's CPU backend builds its kernels with it
    clip = render_clip(clip_seed(0, "test", 9), frames=3, height=64, width=96, teeth=True)
    results = {}
    for compiled in (False, True):  # float32: the comparison is about compilation only
        runtime = LearnedVideoRuntime(default_models_dir(), "cpu", stabilise=False, precision="float32",
                                      compile_models=compiled)
        assert f"compiled={compiled}" in runtime.info.parameters
        results[compiled] = runtime.enhance(clip.degraded, clip.fps).frames
    diff = np.abs(results[False].astype(np.int16) - results[True].astype(np.int16))
    assert diff.mean() < 0.5 and diff.max() <= 4


def test_compile_without_a_cpu_compiler_is_a_config_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no c++, g++ or clang++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="models.compile.*C\\+\\+ compiler"):
        build_video_runtime("learned", "cpu", compile_models=True)
    check_compile(False, "cpu")  # not asked for: nothing to check
    check_compile(True, "cuda")  # CUDA compiles with Triton, not a C++ compiler
    assert build_video_runtime("baseline", "cpu", compile_models=True).info.family != "ai"  # ignored there
