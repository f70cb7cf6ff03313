"""Error replies of the HTTP API that FastAPI's defaults get wrong."""

from __future__ import annotations

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dicom_service.json_values import finite_json


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 with FastAPI's usual ``detail`` for a request that fails validation; a body
    holding ``NaN`` or ``Infinity`` (which Python's JSON parser accepts) is echoed with
    those values as strings, where FastAPI's own handler fails to encode them and answers 500."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse(status_code=422,
                        content={"detail": finite_json(jsonable_encoder(error.errors()), repr)})
