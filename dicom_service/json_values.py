"""JSON values without NaN or infinities, which strict JSON cannot hold."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


def finite_json(value: Any, replace: Callable[[float], Any]) -> Any:
    """``value`` (nested dicts, lists and tuples, numbers, numpy scalars) with each NaN or
    infinite float replaced by ``replace(it)``; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {key: finite_json(item, replace) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item, replace) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else replace(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
