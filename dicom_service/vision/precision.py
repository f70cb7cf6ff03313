"""Compute precision of the video models at inference: which dtype autocast runs in.

``auto`` picks half precision where the hardware runs it natively and float32 elsewhere:

* CUDA: float16;
* CPU with native bfloat16 (AVX512-BF16 or AMX tiles; oneDNN then runs bfloat16
  convolutions several times faster than float32): bfloat16;
* any other CPU: float32 (bfloat16 there is emulated and slower).

The restoration network's output differs from float32 by at most a few grey levels
(measured in ``eval video --precision``; see the README), so the quality figures hold for
both. Training always runs in float32.
"""

from __future__ import annotations

import torch

from dicom_service.domain import PRECISIONS, precision_problem

__all__ = ["PRECISIONS", "compile_for_inference", "for_inference", "inference_dtype", "native_bfloat16",
           "precision_name"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bfloat16() -> bool:
    """True if this CPU runs bfloat16 natively (AVX512-BF16 or AMX), as torch reports it.

    Uses ``torch.cpu``'s capability probes; False where this torch build lacks them.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(probe()) for probe in probes if probe is not None)
    except RuntimeError:  # pragma: no cover - a build without cpuinfo
        return False


def inference_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype the video models compute in on ``device``.

    Parameters
    ----------
    device : torch.device or str
        ``cpu`` or ``cuda[:N]``.
    precision : str
        One of :data:`PRECISIONS`; ``auto`` as described in the module docstring.

    Returns
    -------
    torch.dtype
        ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.

    Raises
    ------
    ValueError
        An unknown precision, or float16 on the CPU (no fast kernels there).
    """
    device = torch.device(device)
    problem = precision_problem(precision, str(device))
    if problem is not None:
        raise ValueError(problem)
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_bfloat16() else torch.float32
    return _DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``: the spelling of :data:`PRECISIONS`, for reports and provenance."""
    return str(dtype).removeprefix("torch.")


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with channels-last weights (faster oneDNN and cuDNN convolutions).

    The memory format changes no result beyond float rounding (at most one grey level
    on the bundled restoration model).
    """
    return model.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]


def compile_for_inference(model: torch.nn.Module, methods: tuple[str, ...] = ("forward",)) -> torch.nn.Module:
    """Replace ``model``'s ``methods`` by their ``torch.compile``d versions (static shapes).

    Compilation happens on the first call of each method for each new input shape (and
    each new pattern of optional inputs given or None): about a minute for the bundled
    restoration network on 2 CPU cores, after which its frames run faster (README,
    "Video runtime speed"). Results match the eager model to float rounding.

    Parameters
    ----------
    model : torch.nn.Module
    methods : tuple of str
        Names of the methods to compile (``forward`` is what ``model(...)`` calls).
    """
    for name in methods:
        setattr(model, name, torch.compile(getattr(model, name), dynamic=False))
    return model
