"""Error replies of the HTTP API that FastAPI's defaults get wrong."""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def json_safe(value: object) -> object:
    """``value`` (decoded JSON: dicts, lists, scalars) with every non-finite float written as
    a string (``"nan"``, ``"inf"``, ``"-inf"``), which strict JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 with FastAPI's usual ``detail`` for a request that fails validation; a body
    holding ``NaN`` or ``Infinity`` (which Python's JSON parser accepts) is echoed with
    those values as strings, where FastAPI's own handler fails to encode them and answers 500."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse(status_code=422,
                        content={"detail": json_safe(jsonable_encoder(error.errors()))})
